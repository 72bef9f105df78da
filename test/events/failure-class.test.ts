import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { KafkaJSConnectionError, KafkaJSNonRetriableError, KafkaJSProtocolError } from "kafkajs";
import { describe, expect, it } from "vitest";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { PoisonMessageError } from "../../platform/events/envelope.js";
import { classifyFailure, fullJitterBackoff } from "../../platform/events/failure-class.js";

const withCode = (message: string, code: string) => Object.assign(new Error(message), { code });

describe("classifyFailure", () => {
  it.each([
    ["gRPC unavailable", new ConnectError("documents is unavailable", Code.Unavailable)],
    ["gRPC deadline exceeded", new ConnectError("deadline", Code.DeadlineExceeded)],
    ["gRPC aborted", new ConnectError("conflict", Code.Aborted)],
    ["gRPC cancelled", new ConnectError("the call was cancelled", Code.Canceled)],
    [
      "gRPC resource exhausted with RetryInfo",
      new ConnectError("slow down", Code.ResourceExhausted, undefined, [
        { desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay: { seconds: 1n } }) },
      ]),
    ],
    ["connection refused", withCode("connect ECONNREFUSED 127.0.0.1:5432", "ECONNREFUSED")],
    ["connection reset", withCode("read ECONNRESET", "ECONNRESET")],
    ["DNS try again", withCode("getaddrinfo EAI_AGAIN db", "EAI_AGAIN")],
    ["Postgres admin shutdown", withCode("terminating connection due to administrator command", "57P01")],
    ["Postgres connection failure", withCode("connection failure", "08006")],
    ["Postgres serialization failure", withCode("could not serialize access", "40001")],
    ["pg connection terminated", new Error("Connection terminated unexpectedly")],
    ["kafkajs connection error", new KafkaJSConnectionError("Connection error: ECONNREFUSED")],
    [
      "kafkajs retries exhausted over a connection error",
      // What KafkaJSNumberOfRetriesExceeded looks like: non-retriable itself, the real error as its cause.
      (() => {
        const cause = new KafkaJSConnectionError("Connection timeout");
        // kafkajs' typings leave out the options its constructors take.
        const NonRetriable = KafkaJSNonRetriableError as unknown as new (e: Error, o: { cause: Error }) => Error;
        return new NonRetriable(cause, { cause });
      })(),
    ],
    ["a socket error wrapped as a cause", new Error("request failed", { cause: withCode("x", "ECONNRESET") })],
  ])("%s is transient", (_name, err) => {
    expect(classifyFailure(err)).toBe("transient");
  });

  it.each([
    ["gRPC invalid argument", new ConnectError("bad", Code.InvalidArgument)],
    ["gRPC internal", new ConnectError("internal error; it has been logged", Code.Internal)],
    ["gRPC permission denied", new ConnectError("no", Code.PermissionDenied)],
    [
      "gRPC resource exhausted without RetryInfo (message too large)",
      new ConnectError("too big", Code.ResourceExhausted),
    ],
    ["gRPC unavailable wrapped by nothing but a message", new Error("unavailable")],
    [
      "a ConnectError whose cause was a socket error",
      new ConnectError("bad", Code.FailedPrecondition, undefined, undefined, withCode("x", "ECONNRESET")),
    ],
    ["Postgres unique violation", withCode("duplicate key", "23505")],
    ["Postgres syntax error", withCode("syntax error", "42601")],
    [
      "a non-retriable kafkajs protocol error",
      new KafkaJSProtocolError({
        message: "too large",
        type: "MESSAGE_TOO_LARGE",
        code: 10,
        retriable: false,
      } as unknown as Error),
    ],
    ["a poison message", new PoisonMessageError("does not decode")],
    ["a plain error", new Error("the analysis backend is down")],
    ["a thrown string", "oops"],
    ["undefined", undefined],
  ])("%s is permanent", (_name, err) => {
    expect(classifyFailure(err)).toBe("permanent");
  });
});

describe("fullJitterBackoff", () => {
  it("spreads each wait over [0, min(cap, base × 2^n)) and never passes the cap", () => {
    const top = fullJitterBackoff(100, 1000, () => 0.999999);
    expect([1, 2, 3, 4, 50].map(top)).toEqual([199, 399, 799, 999, 999]);
    const bottom = fullJitterBackoff(100, 1000, () => 0);
    expect([1, 2, 10].map(bottom)).toEqual([0, 0, 0]);
    const real = fullJitterBackoff(100, 1000);
    const waits = Array.from({ length: 200 }, () => real(3));
    expect(Math.max(...waits)).toBeLessThan(800);
    expect(new Set(waits).size).toBeGreaterThan(10);
  });
});
