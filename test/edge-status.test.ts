import { describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import { edgeMessage } from "../gateway/edge-status.js";

describe("what a gateway caller reads of a service's status", () => {
  it("keeps a service's sentence that names a list element", () => {
    const said = "events[0].device_id: a device may publish only its own events";
    expect(edgeMessage(Code.PermissionDenied, said)).toBe(said);
    expect(edgeMessage(Code.InvalidArgument, "events[12].client_id: must be at least 1 characters")).toMatch(
      /events\[12\]/,
    );
  });

  it("replaces a status that carries peer addresses with a plain sentence", () => {
    expect(edgeMessage(Code.Unavailable, "connect ECONNREFUSED [::1]:50055")).toBe(
      "the service is unavailable right now; try again shortly",
    );
    expect(edgeMessage(Code.Internal, "upstream 10.0.0.7:50051 failed")).toBe("the call failed inside the mesh");
  });
});
