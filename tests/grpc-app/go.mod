// A real gRPC server and client (grpc-go's health service) for the waypoint tests.
// scripts/build-grpc-app.sh builds it once per machine, keyed on this file and go.sum.
module weft.dev/tests/grpc-app

go 1.26.0

require google.golang.org/grpc v1.82.1

require (
	golang.org/x/net v0.53.0 // indirect
	golang.org/x/sys v0.43.0 // indirect
	golang.org/x/text v0.36.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260414002931-afd174a4e478 // indirect
	google.golang.org/protobuf v1.36.11 // indirect
)
