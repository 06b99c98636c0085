// The three RPC systems bench/rpc.ts compares, each serving the same procedure `add(a, b)`:
// rpcmig (MessagePack-RPC), @grpc/grpc-js unary, and node:http JSON POST with keep-alive.
// A Caller is one connection; servers run in child processes (`rpc.js serve SYSTEM`).
import { Agent, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { fromJSON } from '@grpc/proto-loader';
import { connect, serve } from '../runtime/index.js';

export interface Caller {
  add(a: number, b: number): Promise<number>;
  close(): void;
}

export interface System {
  readonly name: string;
  /** Starts serving on 127.0.0.1; resolves with "host:port". */
  serve(): Promise<string>;
  /** One connection to the server at `address`. */
  connect(address: string): Promise<Caller>;
}

const calc = { add: (a: number, b: number) => a + b };

function split(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(':');
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

const rpcmig: System = {
  name: 'rpcmig',
  async serve() {
    return (await serve('bench', calc, { daemon: false })).address;
  },
  async connect(address) {
    const client = await connect<typeof calc>(split(address));
    return { add: (a, b) => client.add(a, b), close: () => void client.close() };
  },
};

/** The proto, inline: `service Calc { rpc Add (Pair) returns (Sum); }`. */
const PROTO = {
  nested: {
    bench: {
      nested: {
        Pair: { fields: { a: { type: 'int32', id: 1 }, b: { type: 'int32', id: 2 } } },
        Sum: { fields: { sum: { type: 'int32', id: 1 } } },
        Calc: { methods: { Add: { requestType: 'Pair', responseType: 'Sum' } } },
      },
    },
  },
};

interface Pair {
  a: number;
  b: number;
}
interface Sum {
  sum: number;
}
type CalcStub = grpc.Client & {
  Add(pair: Pair, callback: (error: grpc.ServiceError | null, sum?: Sum) => void): void;
};

function calcService(): grpc.ServiceClientConstructor {
  const loaded = grpc.loadPackageDefinition(fromJSON(PROTO as Parameters<typeof fromJSON>[0]));
  return (loaded.bench as grpc.GrpcObject).Calc as grpc.ServiceClientConstructor;
}

const grpcUnary: System = {
  name: 'grpc-js',
  serve() {
    const server = new grpc.Server();
    server.addService(calcService().service, {
      Add: (call: grpc.ServerUnaryCall<Pair, Sum>, callback: grpc.sendUnaryData<Sum>) => {
        callback(null, { sum: calc.add(call.request.a, call.request.b) });
      },
    });
    return new Promise((resolve, reject) => {
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, port) => {
        if (error) reject(error);
        else resolve(`127.0.0.1:${port}`);
      });
    });
  },
  async connect(address) {
    // A local subchannel pool: each Caller gets its own TCP connection, as the rows say.
    const stub = new (calcService())(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as CalcStub;
    await new Promise<void>((resolve, reject) => stub.waitForReady(Date.now() + 5000, (error) => (error ? reject(error) : resolve())));
    const add = (a: number, b: number) =>
      new Promise<number>((resolve, reject) => stub.Add({ a, b }, (error, sum) => (error ? reject(error) : resolve(sum?.sum ?? 0))));
    return { add, close: () => stub.close() };
  },
};

const http: System = {
  name: 'node:http',
  serve() {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const { a, b } = JSON.parse(Buffer.concat(chunks).toString()) as Pair;
        const body = JSON.stringify({ sum: calc.add(a, b) });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      });
    });
    server.keepAliveTimeout = 60_000;
    return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`127.0.0.1:${(server.address() as AddressInfo).port}`)));
  },
  async connect(address) {
    // One socket per Caller: HTTP/1.1 in Node does not pipeline, so its calls queue on it.
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const { host, port } = split(address);
    const add = (a: number, b: number) =>
      new Promise<number>((resolve, reject) => {
        const body = JSON.stringify({ a, b });
        const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
        const req = request({ host, port, agent, method: 'POST', path: '/add', headers }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => resolve((JSON.parse(Buffer.concat(chunks).toString()) as Sum).sum));
        });
        req.on('error', reject);
        req.end(body);
      });
    return { add, close: () => agent.destroy() };
  },
};

export const SYSTEMS: readonly System[] = [rpcmig, grpcUnary, http];
