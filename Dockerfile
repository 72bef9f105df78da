# syntax=docker/dockerfile:1.7
# One image for every medmesh process; the command picks the entry point, e.g.
#   docker run medmesh services/documents/main.ts
#   docker run medmesh gateway/main.ts
# TypeScript runs through tsx at runtime (a production dependency), so there is no compile stage:
# the image ships the same sources the tests ran against.

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
# Only the manifests, so the dependency layer is reused until they change.
COPY package.json package-lock.json .npmrc ./
# Installing inside the image (never copying the host's node_modules) gets the linux/glibc
# builds of native and platform-specific packages such as esbuild's binary.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${NODE_IMAGE} AS runtime
# tsx keeps its transform cache under the temp dir, the one writable volume when the root filesystem
# is read-only. Embedded data (only used without DATABASE_URL) goes there too, out of the sources.
ENV NODE_ENV=production \
    TMPDIR=/tmp \
    MEDMESH_DATA_DIR=/tmp/medmesh-data
WORKDIR /app
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
# Sources are owned by root and read-only to the runtime user: a compromised process cannot
# rewrite the code it runs.
COPY --chown=root:root . .
# Where documents keeps uploaded files (BLOB_DIR in compose and Kubernetes), owned by the runtime
# user: a new named volume mounted here takes this ownership, so uid 1000 can write to it.
RUN mkdir -p /var/lib/medmesh/blobs && chown 1000:1000 /var/lib/medmesh/blobs
# The node image ships an unprivileged "node" user (uid 1000); the numeric form lets Kubernetes
# verify runAsNonRoot without resolving names.
USER 1000:1000
EXPOSE 50051 8080
ENTRYPOINT ["node", "--import", "tsx"]
CMD ["services/documents/main.ts"]
