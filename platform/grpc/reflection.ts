import { create, toBinary, type DescFile, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";

/** What reflection can tell a client: every file reachable from the served services. */
interface ReflectionIndex {
  serviceNames: string[];
  fileByName: Map<string, DescFile>;
  fileBySymbol: Map<string, DescFile>;
  extensionFile: Map<string, DescFile>;
  extensionNumbers: Map<string, number[]>;
}

function buildReflectionIndex(services: DescService[]): ReflectionIndex {
  const all = [...services, Health, v1.ServerReflection, v1alpha.ServerReflection];
  const index: ReflectionIndex = {
    serviceNames: [...new Set(all.map((s) => s.typeName))].sort(),
    fileByName: new Map(),
    fileBySymbol: new Map(),
    extensionFile: new Map(),
    extensionNumbers: new Map(),
  };
  // Option-only imports (validate.proto, access.proto) are dependencies like any other,
  // so walking file.dependencies covers them and clients can resolve custom options.
  const visit = (file: DescFile) => {
    if (index.fileByName.has(file.name + ".proto")) return;
    index.fileByName.set(file.name + ".proto", file);
    for (const dep of file.dependencies) visit(dep);
    const addMessage = (m: DescMessage) => {
      index.fileBySymbol.set(m.typeName, file);
      for (const f of m.fields) index.fileBySymbol.set(`${m.typeName}.${f.name}`, file);
      for (const o of m.oneofs) index.fileBySymbol.set(`${m.typeName}.${o.name}`, file);
      for (const n of m.nestedMessages) addMessage(n);
      for (const e of m.nestedEnums) index.fileBySymbol.set(e.typeName, file);
      for (const x of m.nestedExtensions) addExtension(x);
    };
    const addExtension = (x: DescFile["extensions"][number]) => {
      index.fileBySymbol.set(x.typeName, file);
      index.extensionFile.set(`${x.extendee.typeName}#${x.number}`, file);
      const list = index.extensionNumbers.get(x.extendee.typeName) ?? [];
      list.push(x.number);
      index.extensionNumbers.set(x.extendee.typeName, list);
    };
    for (const m of file.messages) addMessage(m);
    for (const e of file.enums) index.fileBySymbol.set(e.typeName, file);
    for (const x of file.extensions) addExtension(x);
    for (const s of file.services) {
      index.fileBySymbol.set(s.typeName, file);
      for (const m of s.methods) index.fileBySymbol.set(`${s.typeName}.${m.name}`, file);
    }
  };
  for (const s of all) visit(s.file);
  return index;
}

/** The file and everything it imports, dependencies first, each once. */
function withDependencies(file: DescFile): Uint8Array[] {
  const seen = new Set<string>();
  const out: Uint8Array[] = [];
  const walk = (f: DescFile) => {
    if (seen.has(f.name)) return;
    seen.add(f.name);
    out.push(toBinary(FileDescriptorProtoSchema, f.proto));
    for (const d of f.dependencies) walk(d);
  };
  walk(file);
  return out;
}

type Request = v1.ServerReflectionRequest | v1alpha.ServerReflectionRequest;
type ResponseBody = v1.ServerReflectionResponse["messageResponse"];

const NOT_FOUND = 5;
const INVALID_ARGUMENT = 3;

function answer(index: ReflectionIndex, req: Request): ResponseBody {
  const notFound = (what: string): ResponseBody => ({
    case: "errorResponse",
    value: create(v1.ErrorResponseSchema, { errorCode: NOT_FOUND, errorMessage: `${what} not found` }),
  });
  const files = (file: DescFile | undefined, what: string): ResponseBody =>
    file
      ? {
          case: "fileDescriptorResponse",
          value: create(v1.FileDescriptorResponseSchema, { fileDescriptorProto: withDependencies(file) }),
        }
      : notFound(what);
  const r = req.messageRequest;
  switch (r.case) {
    case "fileByFilename":
      return files(index.fileByName.get(r.value), `file ${r.value}`);
    case "fileContainingSymbol":
      return files(index.fileBySymbol.get(r.value.replace(/^\./, "")), `symbol ${r.value}`);
    case "fileContainingExtension":
      return files(
        index.extensionFile.get(`${r.value.containingType}#${r.value.extensionNumber}`),
        `extension ${r.value.extensionNumber} of ${r.value.containingType}`,
      );
    case "allExtensionNumbersOfType": {
      if (!index.fileBySymbol.has(r.value)) return notFound(`type ${r.value}`);
      return {
        case: "allExtensionNumbersResponse",
        value: create(v1.ExtensionNumberResponseSchema, {
          baseTypeName: r.value,
          extensionNumber: index.extensionNumbers.get(r.value) ?? [],
        }),
      };
    }
    case "listServices":
      return {
        case: "listServicesResponse",
        value: create(v1.ListServiceResponseSchema, {
          service: index.serviceNames.map((name) => create(v1.ServiceResponseSchema, { name })),
        }),
      };
    default:
      return {
        case: "errorResponse",
        value: create(v1.ErrorResponseSchema, {
          errorCode: INVALID_ARGUMENT,
          errorMessage: "empty reflection request",
        }),
      };
  }
}

/**
 * grpc.reflection v1 and v1alpha. The two versions share field names and numbers, so one
 * answer function serves both; only the outer message schema differs.
 */
export function reflectionServices(
  services: DescService[],
): Array<{ service: DescService; impl: Partial<ServiceImpl<DescService>> }> {
  const index = buildReflectionIndex(services);
  const make = (schema: typeof v1.ServerReflectionResponseSchema | typeof v1alpha.ServerReflectionResponseSchema) =>
    async function* serverReflectionInfo(requests: AsyncIterable<Request>) {
      for await (const req of requests) {
        // The two schemas are wire-identical; the cast only tells TypeScript so.
        yield create(schema as typeof v1.ServerReflectionResponseSchema, {
          validHost: req.host,
          originalRequest: req as v1.ServerReflectionRequest,
          messageResponse: answer(index, req),
        });
      }
    };
  return [
    { service: v1.ServerReflection, impl: { serverReflectionInfo: make(v1.ServerReflectionResponseSchema) } as never },
    {
      service: v1alpha.ServerReflection,
      impl: { serverReflectionInfo: make(v1alpha.ServerReflectionResponseSchema) } as never,
    },
  ];
}
