# syntax=docker/dockerfile:1
# Build: cgo is on because pgcanary links PostgreSQL's own parser (pg_query, C) into the binary.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/pgcanary ./cmd/pgcanary

# Runtime: a small glibc image (the binary needs only libc), no shell, non-root by number so that
# Kubernetes' runAsNonRoot can verify it.
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/pgcanary /usr/local/bin/pgcanary
USER 65532:65532
EXPOSE 6432 9187
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["/usr/local/bin/pgcanary", "healthcheck", "--admin", "127.0.0.1:9187", "--timeout", "2s"]
ENTRYPOINT ["/usr/local/bin/pgcanary"]
# The upstream and the rest come from the environment (PGCANARY_UPSTREAM=db:5432, ...) or from
# flags added after the image name; a mounted --config file works too.
CMD ["serve", "--listen", "0.0.0.0:6432", "--admin", "0.0.0.0:9187"]
