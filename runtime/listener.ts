// A server's listening socket, which a standby (standby.ts) binds ahead of its state: binding
// needs nothing of the state, and it was one of the steps between the state's arrival and the
// moved server's registration (~0.45 ms here). serve() takes the socket bound ahead when it
// asks for what that socket was bound to (the same host, any port); otherwise that socket is
// closed and serve() binds its own.
import { createServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';

let ahead: { net: NetServer; host: string } | undefined;

/**
 * The host a server listens on: `RPCMIG_HOST` when set (a daemon starting a moved server sets
 * it: the host written in the code was the old one's), else the one asked for, else loopback.
 */
export function serverHost(asked?: string): string {
  return process.env.RPCMIG_HOST || asked || '127.0.0.1';
}

/** Binds a listening socket on `host`, any port, for the first server this process starts; resolves with the port. */
export async function listenAhead(host: string): Promise<number> {
  const net = createServer({ noDelay: true });
  // Nobody knows its port before the server registers: whatever connects before is cut.
  net.on('connection', cut);
  await listen(net, host, 0);
  // Until a server takes it, it does not keep the process alive.
  net.unref();
  ahead = { net, host };
  return (net.address() as AddressInfo).port;
}

/** A listening socket on `host`:`port` (0: any): the one bound ahead if it fits, else a new one. */
export async function listening(host: string, port: number): Promise<NetServer> {
  const bound = ahead;
  ahead = undefined;
  if (bound !== undefined && bound.host === host && port === 0) {
    bound.net.off('connection', cut);
    bound.net.ref();
    return bound.net;
  }
  bound?.net.close();
  const net = createServer({ noDelay: true });
  await listen(net, host, port);
  return net;
}

function cut(socket: Socket): void {
  socket.destroy();
}

function listen(net: NetServer, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    net.once('error', reject);
    net.listen(port, host, () => {
      net.off('error', reject);
      resolve();
    });
  });
}
