import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { QuotaFailure_ViolationSchema, QuotaFailureSchema } from "../../gen/google/rpc/error_details_pb.js";

/**
 * resource_exhausted with google.rpc.QuotaFailure naming the caller and the limit. No RetryInfo:
 * waiting does not help, the caller has to finish or give up something it holds.
 */
export function quotaExceeded(message: string, subject: string, limit: string): ConnectError {
  return new ConnectError(message, Code.ResourceExhausted, undefined, [
    {
      desc: QuotaFailureSchema,
      value: create(QuotaFailureSchema, {
        violations: [create(QuotaFailure_ViolationSchema, { subject: `user:${subject}`, description: limit })],
      }),
    },
  ]);
}

/**
 * How many long-lived calls (watches, streamed uploads) each user holds in this process. The
 * count is per replica on purpose: these calls hold this process's memory and sockets, and a
 * shared count would cost a database round trip for a limit that only protects the process.
 */
export class PerUserSlots {
  private readonly held = new Map<string, number>();

  constructor(
    readonly max: number,
    /** The refusal for a user who already holds `max`. */
    private readonly refusal: (subject: string, max: number) => ConnectError,
  ) {}

  /** Takes one of the user's slots, or throws the refusal; the returned function gives it back (once). */
  take(subject: string): () => void {
    const n = this.held.get(subject) ?? 0;
    if (n >= this.max) throw this.refusal(subject, this.max);
    this.held.set(subject, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.held.get(subject) ?? 1) - 1;
      if (left > 0) this.held.set(subject, left);
      else this.held.delete(subject);
    };
  }
}

/** What one user may hold at once. */
export interface CallerLimits {
  /** Concurrent WatchDocument streams per user on this replica. */
  watchesPerUser: number;
  /** Concurrent streamed Upload calls per user on this replica. */
  uploadStreamsPerUser: number;
  /** Open resumable uploads per user, across replicas. */
  openUploadsPerUser: number;
  /** Bytes announced by a user's open resumable uploads together, across replicas. */
  openUploadBytesPerUser: number;
}

export const defaultCallerLimits: CallerLimits = {
  watchesPerUser: 16,
  uploadStreamsPerUser: 4,
  openUploadsPerUser: 20,
  openUploadBytesPerUser: 2 * 1024 ** 3,
};

export function watchSlots(max: number): PerUserSlots {
  return new PerUserSlots(max, (subject, n) =>
    quotaExceeded(
      `you are already watching ${n} documents at once, the most one user may; stop one of those watches before starting another`,
      subject,
      `concurrent WatchDocument streams per user: ${n}`,
    ),
  );
}

export function uploadStreamSlots(max: number): PerUserSlots {
  return new PerUserSlots(max, (subject, n) =>
    quotaExceeded(
      `you already have ${n} uploads streaming at once, the most one user may; let one of them finish before starting another`,
      subject,
      `concurrent Upload streams per user: ${n}`,
    ),
  );
}
