package proxy

import (
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveUnixPath(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		addr, defaultPort, want, err string
	}{
		{addr: dir + ":5433", want: filepath.Join(dir, ".s.PGSQL.5433")},
		{addr: dir, defaultPort: "5432", want: filepath.Join(dir, ".s.PGSQL.5432")},
		{addr: dir + "/.s.PGSQL.6000", want: filepath.Join(dir, ".s.PGSQL.6000")},
		{addr: "/no/such/dir", defaultPort: "5432", want: "/no/such/dir/.s.PGSQL.5432"}, // created later
		{addr: "/a:b/.s.PGSQL.7", want: "/a:b/.s.PGSQL.7"},                              // a colon before the last slash is part of a name
		{addr: dir, err: "say which port's socket"},
		{addr: "/no/such/dir", err: "say which port's socket"},
		{addr: dir + ":0", err: "not a number from 1 to 65535"},
		{addr: dir + ":x", err: "not a number from 1 to 65535"},
		{addr: "/" + strings.Repeat("d", 110), defaultPort: "5432", err: "over the system's limit"},
	} {
		got, err := resolveUnixPath(c.addr, c.defaultPort)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("resolveUnixPath(%q): %q, %v; want error containing %q", c.addr, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("resolveUnixPath(%q) = %q, %v; want %q", c.addr, got, err, c.want)
		}
	}
}

// A client on a Unix socket has no address: its routing key and flag attribute are "local".
func TestRoutingClientAddrOfSocket(t *testing.T) {
	r := newRouting("client_addr", nil, &net.UnixAddr{Name: "@", Net: "unix"})
	if r.clientAddr != "local" {
		t.Fatalf("client_addr of a socket client %q, want local", r.clientAddr)
	}
	r = newRouting("client_addr", nil, &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5000})
	if r.clientAddr != "10.1.2.3" {
		t.Fatalf("client_addr %q, want 10.1.2.3", r.clientAddr)
	}
}

// Unix connections take the raw system call path too (sysconn.go), both ways.
func TestSysConnOverUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".s.PGSQL.1")
	ln, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		sc := newSysConn(c)
		buf := make([]byte, 4)
		if n, err := sc.Read(buf); err == nil {
			_, _ = sc.Write(buf[:n])
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := newSysConn(c)
	if _, ok := sc.(*sysConn); !ok {
		t.Fatalf("newSysConn(%T) = %T, want *sysConn", c, sc)
	}
	if _, err := sc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q %v", buf, err)
	}
}
