export * from "./types.js";
export { FsBlobStore, type FsBlobStoreOptions } from "./fs-store.js";
export { detectContentType, SNIFF_BYTES, type ContentKind, type DetectedType } from "./content-type.js";
