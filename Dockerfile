# One image serves as both the operator (/manager) and the unseal init
# container (/modelguard). Build with `make docker-build` where Docker runs.
FROM golang:1.26 AS build
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY internal/ internal/
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags "-X github.com/modelguard/modelguard/internal/version.Version=${VERSION}" -o /out/manager ./cmd/manager \
 && go build -trimpath -ldflags "-X github.com/modelguard/modelguard/internal/version.Version=${VERSION}" -o /out/modelguard ./cmd/modelguard

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/manager /manager
COPY --from=build /out/modelguard /modelguard
USER 65532:65532
ENTRYPOINT ["/manager"]
