// Program shipping as content-addressed blobs (DESIGN §3 steps 2 and 5, §6), for the migration
// coordinator: the source builds a manifest and sends what the destination's store lacks; the
// destination validates the manifest, receives the blobs and materialises the program.
export { buildManifest, findPackageRoot, hashStats, manifestId, type ManifestOptions } from './manifest.js';
export { type Placed } from './packages.js';
export { DEFAULT_LIMITS, validateManifest, type Entry, type FileEntry, type LinkEntry, type Limits, type Manifest } from './validate.js';
export { BlobStore } from './blobs.js';
export { BlobReceiver, chunkFile, copyHere, sendBlobs, type Piece, type SendBatch, type SendOptions } from './copy.js';
export { materialize } from './materialize.js';
