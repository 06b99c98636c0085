// The public API of rpcmig (DESIGN §5): serve procedures, connect to them, the errors both
// sides report, and the state-file bytes of this process.
export { serve, STATS, WHEREIS, type Server, type ServeOptions } from './server.js';
export { connect, invoke, DEFAULT_TIMEOUT, type CallOptions, type Client, type DirectTarget, type NamedOptions, type Remote } from './client.js';
export { RpcmigError, WIRE_CODES, DAEMON_CODES, LOCAL_CODES, type ErrorCode, type DaemonCode, type LocalCode, type WireCode, type WireError } from './errors.js';
export { captureState } from './state.js';
