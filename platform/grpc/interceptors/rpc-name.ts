import type { DescMethod } from "@bufbuild/protobuf";

const names = new WeakMap<DescMethod, string>();

/** "package.Service/Method", as logs, metrics and spans name a call; built once per method. */
export function rpcName(method: DescMethod): string {
  let name = names.get(method);
  if (name === undefined) names.set(method, (name = `${method.parent.typeName}/${method.name}`));
  return name;
}
