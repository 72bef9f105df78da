// PLACEHOLDER — being implemented (resumable browser uploads). Replace wholesale.
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import type { DocumentAccess } from "./access.js";
import type { ContentOptions } from "./service.js";
import type { DocumentStore } from "./store.js";

export interface ResumableUploadOptions {
  /** How long an upload may sit untouched before it expires. */
  sessionTtlMs: number;
}

type Handlers = Pick<ServiceImpl<typeof DocumentService>, "startUpload" | "uploadPart" | "getUploadStatus" | "completeUpload" | "abortUpload">;

export function resumableUploadHandlers(_store: DocumentStore, _access: DocumentAccess, _content: ContentOptions): Handlers {
  const todo = () => {
    throw new ConnectError("not yet", Code.Unimplemented);
  };
  return { startUpload: todo, uploadPart: todo, getUploadStatus: todo, completeUpload: todo, abortUpload: todo };
}
