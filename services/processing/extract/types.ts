/** Why a document yielded no analysable text. Each maps to a distinct user-facing outcome. */
export type FailureReason = "encrypted" | "image_only" | "corrupt" | "empty" | "unsupported_type" | "too_large";

export interface ExtractionFailure {
  ok: false;
  reason: FailureReason;
  /** A sentence for the uploader: what is wrong and, where possible, what to do. */
  message: string;
}

export function failure(reason: FailureReason, message: string): ExtractionFailure {
  return { ok: false, reason, message };
}
