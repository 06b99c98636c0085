// bench/migration.svg: total and pause of a move against state size, log-log, with the paper's
// projection for comparison. Plain SVG, no dependency.
export interface Point {
  bytes: number;
  total: number;
  pause: number;
}

const W = 720;
const H = 440;
const PAD = { left: 70, right: 170, top: 30, bottom: 50 };
const X = [2 ** 9, 2 ** 27];
const Y = [1, 1e6];

const sx = (bytes: number) => PAD.left + ((Math.log10(bytes) - Math.log10(X[0])) / (Math.log10(X[1]) - Math.log10(X[0]))) * (W - PAD.left - PAD.right);
const sy = (ms: number) => H - PAD.bottom - ((Math.log10(ms) - Math.log10(Y[0])) / (Math.log10(Y[1]) - Math.log10(Y[0]))) * (H - PAD.top - PAD.bottom);

function line(points: Array<[number, number]>, color: string, dash = ''): string {
  const d = points.map(([x, y], i) => `${i === 0 ? 'M' : 'L'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
  const dots = dash ? '' : points.map(([x, y]) => `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${color}"/>`).join('');
  return `<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/>${dots}`;
}

function label(bytes: number): string {
  return bytes >= 2 ** 20 ? `${bytes / 2 ** 20} MB` : `${bytes / 1024} KB`;
}

export function drawChart(points: Point[], paper: (bytes: number) => number): string {
  const grid: string[] = [];
  for (let b = 2 ** 10; b <= X[1]; b *= 16) {
    grid.push(`<line x1="${sx(b)}" y1="${PAD.top}" x2="${sx(b)}" y2="${H - PAD.bottom}" stroke="#ddd"/>`);
    grid.push(`<text x="${sx(b)}" y="${H - PAD.bottom + 18}" text-anchor="middle">${label(b)}</text>`);
  }
  for (let ms = Y[0]; ms <= Y[1]; ms *= 10) {
    grid.push(`<line x1="${PAD.left}" y1="${sy(ms)}" x2="${W - PAD.right}" y2="${sy(ms)}" stroke="#ddd"/>`);
    grid.push(`<text x="${PAD.left - 8}" y="${sy(ms) + 4}" text-anchor="end">${ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`}</text>`);
  }
  const paperLine: Array<[number, number]> = [];
  for (let b = X[0]; b <= X[1]; b *= 2) paperLine.push([b, paper(b)]);
  const legend = [['total (order → first reply)', '#1f6feb', ''], ['pause (calls not executing)', '#d1242f', ''], ['paper 1993, projected', '#6e7781', '6 4']]
    .map(([text, color, dash], i) => {
      const y = PAD.top + 10 + i * 22;
      return `<line x1="${W - PAD.right + 12}" y1="${y}" x2="${W - PAD.right + 36}" y2="${y}" stroke="${color}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/><text x="${W - PAD.right + 42}" y="${y + 4}">${text}</text>`;
    });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${PAD.left}" y="18" font-size="13">rpcmig: one move against state size (two daemons, loopback; log-log)</text>
${grid.join('\n')}
<text x="${(PAD.left + W - PAD.right) / 2}" y="${H - 12}" text-anchor="middle">state moved</text>
${line(paperLine, '#6e7781', '6 4')}
${line(points.map((p) => [p.bytes, p.total]), '#1f6feb')}
${line(points.map((p) => [p.bytes, p.pause]), '#d1242f')}
${legend.join('\n')}
</svg>
`;
}
