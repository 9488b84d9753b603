package e2e

import (
	"context"
	"crypto/tls"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/proxy"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// whoami logs in with dsn and returns the session user and whether the server side is TLS.
func whoami(t *testing.T, dsn string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var user string
	var ssl bool
	if err := conn.QueryRow(ctx, "select current_user, coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false)").Scan(&user, &ssl); err != nil {
		t.Fatal(err)
	}
	return user, ssl
}

func TestAuthRelay(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	for _, u := range []struct{ user, password string }{
		{pgtest.MD5User, pgtest.MD5Password},
		{pgtest.SCRAMUser, pgtest.SCRAMPassword},
		{pgtest.ClearUser, pgtest.ClearPassword},
		{pgtest.SuperUser, ""},
	} {
		t.Run(u.user, func(t *testing.T) {
			if got, _ := whoami(t, p.dsn(u.user, u.password)); got != u.user {
				t.Fatalf("logged in as %q", got)
			}
			if u.password == "" {
				return
			}
			// A wrong password reaches the client as the server's own error.
			_, err := pgx.Connect(context.Background(), p.dsn(u.user, "wrong"))
			if pgCode(err) != "28P01" || !strings.Contains(err.Error(), "password authentication failed for user") {
				t.Fatalf("wrong password: %v", err)
			}
		})
	}
}

// TestClientTLS terminates TLS at the proxy: clients verify the proxy's certificate, SCRAM still
// works (channel binding is not offered), and plaintext clients are still served.
func TestClientTLS(t *testing.T) {
	tlsCfg, ca := proxyCerts(t)
	p := startProxy(t, proxyOpts{clientTLS: tlsCfg})
	secure := p.dsn(pgtest.SCRAMUser, pgtest.SCRAMPassword)
	secure = strings.Replace(secure, "sslmode=disable", "sslmode=verify-full&sslrootcert="+ca, 1)
	if got, _ := whoami(t, secure); got != pgtest.SCRAMUser {
		t.Fatalf("TLS login as %q", got)
	}
	conn := connectDSN(t, secure)
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatal("client connection is not TLS")
	}
	if got, _ := whoami(t, p.dsn(pgtest.MD5User, pgtest.MD5Password)); got != pgtest.MD5User {
		t.Fatalf("plaintext login as %q", got)
	}

	// Without a certificate the proxy refuses TLS: sslmode=require fails, prefer falls back.
	plain := startProxy(t, proxyOpts{})
	req := strings.Replace(plain.dsn(pgtest.SuperUser, ""), "sslmode=disable", "sslmode=require", 1)
	if _, err := pgx.Connect(context.Background(), req); err == nil || !strings.Contains(err.Error(), "server refused TLS") {
		t.Fatalf("sslmode=require against a proxy without TLS: %v", err)
	}
}

// TestUpstreamTLS encrypts proxy→server: tlsuser may only log in over hostssl, so its login
// proves the upstream leg is TLS; verify-full checks the server's certificate.
func TestUpstreamTLS(t *testing.T) {
	if cluster.External {
		t.Skip("PGCANARY_TEST_DSN server: its TLS setup and pg_hba are not ours")
	}
	for _, mode := range []proxy.SSLMode{proxy.SSLRequire, proxy.SSLVerifyCA, proxy.SSLVerifyFull, proxy.SSLPrefer} {
		t.Run(string(mode), func(t *testing.T) {
			p := startProxy(t, proxyOpts{sslMode: mode, rootCert: cluster.CAFile})
			user, ssl := whoami(t, p.dsn(pgtest.TLSOnlyUser, pgtest.TLSPassword))
			if user != pgtest.TLSOnlyUser || !ssl {
				t.Fatalf("user %q ssl %v", user, ssl)
			}
		})
	}
	t.Run("disable refused by hostssl", func(t *testing.T) {
		p := startProxy(t, proxyOpts{sslMode: proxy.SSLDisable})
		_, err := pgx.Connect(context.Background(), p.dsn(pgtest.TLSOnlyUser, pgtest.TLSPassword))
		if pgCode(err) != "28000" {
			t.Fatalf("tlsuser without upstream TLS: %v", err)
		}
	})
	t.Run("verify-full with the wrong CA fails", func(t *testing.T) {
		_, otherCA := proxyCerts(t)
		p := startProxy(t, proxyOpts{sslMode: proxy.SSLVerifyFull, rootCert: otherCA})
		_, err := pgx.Connect(context.Background(), p.dsn(pgtest.SuperUser, ""))
		if pgCode(err) != "08001" || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("wrong CA: %v", err)
		}
	})
}

// TestTLSBothLegsSCRAM: with TLS on both legs, channel binding cannot cross the proxy. A client
// that would use it (the default, channel_binding=prefer) gets the proxy's explanation; with
// channel_binding=disable SCRAM works, from pgx and from libpq (psql).
func TestTLSBothLegsSCRAM(t *testing.T) {
	if cluster.External {
		t.Skip("PGCANARY_TEST_DSN server: its TLS setup is not ours")
	}
	tlsCfg, ca := proxyCerts(t)
	p := startProxy(t, proxyOpts{clientTLS: tlsCfg, sslMode: proxy.SSLVerifyFull, rootCert: cluster.CAFile})
	dsn := strings.Replace(p.dsn(pgtest.SCRAMUser, pgtest.SCRAMPassword), "sslmode=disable", "sslmode=verify-full&sslrootcert="+ca, 1)
	_, err := pgx.Connect(context.Background(), dsn)
	if pgCode(err) != "28000" || !strings.Contains(err.Error(), "channel_binding=disable") {
		t.Fatalf("channel binding through the proxy: %v", err)
	}
	dsn += "&channel_binding=disable"
	if user, ssl := whoami(t, dsn); user != pgtest.SCRAMUser || !ssl {
		t.Fatalf("pgx: user %q upstream ssl %v", user, ssl)
	}
	// md5 over TLS on both legs has no channel binding to lose.
	md5 := strings.Replace(p.dsn(pgtest.MD5User, pgtest.MD5Password), "sslmode=disable", "sslmode=verify-full&sslrootcert="+ca, 1)
	if user, _ := whoami(t, md5); user != pgtest.MD5User {
		t.Fatalf("md5 over TLS: %q", user)
	}
	psql, err := pgtest.FindBin("psql")
	if err != nil {
		t.Skipf("psql not installed: %v", err)
	}
	out, err := exec.Command(psql, "-X", "-At", "-c", "select current_user", dsn).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != pgtest.SCRAMUser {
		t.Fatalf("psql over TLS with SCRAM: %v\n%s", err, out)
	}
}
