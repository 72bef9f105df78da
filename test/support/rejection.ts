import { ConnectError } from "@connectrpc/connect";

/** The error a call fails with; a call that succeeds fails the test. */
export async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}
