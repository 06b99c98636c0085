// A TCP proxy between an rpcmig client and a server that loses replies on purpose: the server
// has executed the call, the client never hears of it. It forwards requests as they come, and
// drops the replies `drop` chooses; `cut()` then breaks every connection, as a network would.
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { encode, readMessages, RESPONSE, type Message } from '../../runtime/wire.js';

export interface LossyProxy {
  readonly address: string;
  /** Replies dropped so far. */
  readonly dropped: number;
  /** Drops the next reply that arrives; `cutAfter`: and cuts both connections at once. */
  dropNext(cutAfter: boolean): void;
  /** Drops every `n`th reply and cuts its connections (0: none). */
  dropEvery(n: number): void;
  /** Breaks every open connection. */
  cut(): void;
  close(): Promise<void>;
}

export async function lossyProxy(target: string): Promise<LossyProxy> {
  const colon = target.lastIndexOf(':');
  const [host, port] = [target.slice(0, colon), Number(target.slice(colon + 1))];
  const pairs = new Set<[Socket, Socket]>();
  let replies = 0;
  let every = 0;
  let next: { cut: boolean } | undefined;
  const state = { dropped: 0 };
  const cutPair = (pair: [Socket, Socket]) => pair.forEach((socket) => socket.destroy());
  const server = createServer((client) => {
    const upstream = connect({ host, port });
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    for (const socket of pair) {
      socket.on('error', () => undefined);
      socket.on('close', () => {
        pairs.delete(pair);
        cutPair(pair);
      });
    }
    client.pipe(upstream);
    readMessages(upstream, {
      onValue: (value) => {
        const message = value as Message;
        if (message[0] === RESPONSE) {
          replies++;
          const chosen = next ?? (every > 0 && replies % every === 0 ? { cut: true } : undefined);
          if (chosen) {
            next = undefined;
            state.dropped++;
            if (chosen.cut) cutPair(pair);
            return;
          }
        }
        if (client.writable) client.write(encode(message));
      },
      onFatal: () => cutPair(pair),
    });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    get dropped() { return state.dropped; },
    dropNext: (cut) => (next = { cut }),
    dropEvery: (n) => (every = n),
    cut: () => [...pairs].forEach(cutPair),
    close: () => {
      [...pairs].forEach(cutPair);
      return new Promise((done) => server.close(() => done()));
    },
  };
}
