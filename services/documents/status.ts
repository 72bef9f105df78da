// PLACEHOLDER — being implemented (WatchDocument, GetProcessingResult).
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { DocumentService } from "../../gen/medmesh/documents/v1/documents_pb.js";
import type { DocumentAccess } from "./access.js";
import type { DocumentStore } from "./store.js";

export class StatusFeed {}

type Handlers = Pick<ServiceImpl<typeof DocumentService>, "watchDocument" | "getProcessingResult">;

export function statusHandlers(_store: DocumentStore, _access: DocumentAccess, _feed: StatusFeed): Handlers {
  return {
    // eslint-disable-next-line require-yield
    async *watchDocument() {
      throw new ConnectError("not yet", Code.Unimplemented);
    },
    getProcessingResult() {
      throw new ConnectError("not yet", Code.Unimplemented);
    },
  };
}
