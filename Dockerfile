# syntax=docker/dockerfile:1
# Build: cgo is on because pgcanary links PostgreSQL's parser (pg_query) in later stages.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/pgcanary ./cmd/pgcanary

# Runtime: a small glibc image (cgo), non-root.
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/pgcanary /usr/local/bin/pgcanary
USER nonroot:nonroot
EXPOSE 6432 9187
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["/usr/local/bin/pgcanary", "healthcheck", "--admin", "127.0.0.1:9187"]
ENTRYPOINT ["/usr/local/bin/pgcanary"]
CMD ["serve", "--listen", "0.0.0.0:6432", "--admin", "0.0.0.0:9187"]
