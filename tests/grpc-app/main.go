// grpc-app: a real gRPC server and client (grpc-go) for weft's waypoint tests. It serves
// the standard gRPC health service, so no generated code is needed beyond what grpc-go
// ships: Check is the unary call, Watch the server-streaming one.
//
//	grpc-app serve <addr> <name>       health server; every response carries the header
//	                                   x-served-by: <name>; service "flip" changes status
//	                                   every 50 ms, so a Watch on it streams
//	grpc-app unary <target> <n>        n Check calls on one connection; prints JSON
//	                                   {"ok": n, "failed": n, "served_by": {name: count}}
//	grpc-app stream <target> <n>       one Watch("flip") call, read until n messages;
//	                                   prints JSON {"messages": n, "served_by": name}
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: grpc-app serve|unary|stream <addr> <name|n>")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2], os.Args[3])
	case "unary":
		err = unary(os.Args[2], atoi(os.Args[3]))
	case "stream":
		err = stream(os.Args[2], atoi(os.Args[3]))
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpc-app:", err)
		os.Exit(1)
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "grpc-app: %q is not a positive count\n", s)
		os.Exit(2)
	}
	return n
}

func serve(addr, name string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	tag := metadata.Pairs("x-served-by", name)
	server := grpc.NewServer(
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			_ = grpc.SetHeader(ctx, tag)
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			_ = ss.SetHeader(tag)
			return h(srv, ss)
		}),
	)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go func() {
		serving := true
		for range time.Tick(50 * time.Millisecond) {
			status := healthpb.HealthCheckResponse_NOT_SERVING
			if serving {
				status = healthpb.HealthCheckResponse_SERVING
			}
			hs.SetServingStatus("flip", status)
			serving = !serving
		}
	}()
	healthpb.RegisterHealthServer(server, hs)
	fmt.Println("serving", addr)
	return server.Serve(lis)
}

func dial(target string) (*grpc.ClientConn, error) {
	return grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func unary(target string, n int) error {
	conn, err := dial(target)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ok, failed := 0, 0
	served := map[string]int{}
	lastErr := ""
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var header metadata.MD
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&header))
		cancel()
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			failed++
			if err != nil {
				lastErr = err.Error()
			}
			continue
		}
		ok++
		for _, who := range header.Get("x-served-by") {
			served[who]++
		}
	}
	return emit(map[string]any{"ok": ok, "failed": failed, "served_by": served, "last_error": lastErr})
}

func stream(target string, n int) error {
	conn, err := dial(target)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "flip"})
	if err != nil {
		return err
	}
	header, err := watch.Header()
	if err != nil {
		return err
	}
	got := 0
	for got < n {
		if _, err := watch.Recv(); err != nil {
			return fmt.Errorf("after %d messages: %w", got, err)
		}
		got++
	}
	who := ""
	if v := header.Get("x-served-by"); len(v) > 0 {
		who = v[0]
	}
	return emit(map[string]any{"messages": got, "served_by": who})
}

func emit(v any) error {
	out, err := json.Marshal(v)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
