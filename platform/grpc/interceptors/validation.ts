import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { createValidator } from "@bufbuild/protovalidate";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { pathToString } from "@bufbuild/protobuf/reflect";
import { invalidArgument } from "../errors.js";

const validator = createValidator();

/** Enforces the buf.validate rules of the contract on every request message, streamed or not. */
export function validationInterceptor(): Interceptor {
  return (next) => async (req) => {
    if (!req.stream) {
      check(req.method.input, req.message);
      return next(req);
    }
    const input = req.message;
    const schema = req.method.input;
    const checked: AsyncIterable<unknown> = {
      async *[Symbol.asyncIterator]() {
        for await (const m of input) {
          check(schema, m as MessageShape<DescMessage>);
          yield m;
        }
      },
    };
    return next({ ...req, message: checked } as typeof req);
  };
}

export function check(schema: DescMessage, message: MessageShape<DescMessage>): void {
  const result = validator.validate(schema, message);
  if (result.kind === "valid") return;
  if (result.kind === "error") {
    throw new ConnectError(`the request could not be validated: ${result.error.message}`, Code.Internal);
  }
  throw invalidArgument(
    result.violations.map((v) => ({
      field: pathToString(v.field) || "(request)",
      description: v.message || v.ruleId,
    })),
  );
}
