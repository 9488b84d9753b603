package e2e

import (
	"encoding/json"
	"os/exec"
	"reflect"
	"testing"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// psycopgProgram drives pgcanary with Python's psycopg 3 and psycopg2, whose use of the protocol
// differs from pgx's: psycopg's pipeline mode sends a batch in pieces and ends it with one Sync,
// its prepared statements (prepare_threshold) are named _pg3_N, executemany pipelines its
// statements, and psycopg2 sends everything as simple Queries with the values interpolated. It
// prints a JSON object of what each part got.
const psycopgProgram = `
import json, sys
import psycopg, psycopg2

dsn = sys.argv[1]
read = "SELECT balance::text FROM accounts WHERE id = %s"
write = "UPDATE accounts SET owner = %s WHERE id = %s"
out = {}

# A read whose new form fails, then a mirrored write, in one pipeline: outside and inside a
# transaction.
with psycopg.connect(dsn, autocommit=True) as c:
    with c.pipeline():
        a = c.execute(read, (7,))
        b = c.execute(write, ("pipeline", 3))
        r = c.execute(read, (2,))
    out["pipeline"] = [a.fetchall(), b.statusmessage, r.fetchall()]
with psycopg.connect(dsn) as c:
    with c.pipeline():
        a = c.execute(read, (7,))
        b = c.execute(write, ("pipeline in tx", 4))
    out["pipeline in tx"] = [a.fetchall(), b.statusmessage]
    c.commit()

# Every statement prepared (prepare_threshold=0): reads that fail on the new shape, and writes.
with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as c:
    got = [c.execute(read, (i,)).fetchone()[0] for i in (6, 7, 8, 7)]
    for i in (5, 6):
        c.execute(write, ("prepared", i))
    out["prepared"] = got

# executemany (pipelined by psycopg) of writes, then of reads that fail on the new shape.
with psycopg.connect(dsn, autocommit=True) as c:
    with c.cursor() as cur:
        cur.executemany(write, [("many", i) for i in (10, 11, 12)])
        out["executemany"] = cur.rowcount
        cur.executemany(read, [(7,), (9,)], returning=True)
        rows = []
        while True:
            rows.append(cur.fetchone()[0])
            if not cur.nextset():
                break
        out["executemany reads"] = rows

# psycopg2: simple Queries.
c2 = psycopg2.connect(dsn)
cur = c2.cursor()
cur.execute(read, (7,))
got = cur.fetchall()
cur.execute(write, ("psycopg2", 13))
c2.commit()
c2.close()
out["psycopg2"] = [list(r) for r in got]

print(json.dumps(out))
`

// psycopgPython finds a Python with psycopg and psycopg2: Debian's packages (python3-psycopg,
// python3-psycopg2, which make test installs) live in the system Python, which a python3 earlier
// on PATH (pyenv) may hide.
func psycopgPython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if path, err := exec.LookPath(py); err == nil && exec.Command(path, "-c", "import psycopg, psycopg2").Run() == nil {
			return path
		}
	}
	t.Skip("no python3 with psycopg and psycopg2 (apt-get install python3-psycopg python3-psycopg2; make test installs them)")
	return ""
}

// TestPsycopg: psycopg 3 and psycopg2 through pgcanary at 100 %, on a migration whose read map
// fails for one row. Every answer is the old shape's (the failing reads fall back, pipelined
// writes after them included), and every write is mirrored.
func TestPsycopg(t *testing.T) {
	py := psycopgPython(t)
	cs := customProxy(t, "psycopg", accountsSchema, accountsMigration("fail"), proxyOpts{})
	cs.setFlags(map[string]float64{"accounts-text": 100})
	ctx := testCtx(t)
	cmd := exec.CommandContext(ctx, py, "-c", psycopgProgram, cs.dsn(pgtest.SuperUser, "")+"&application_name=psycopg")
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("psycopg program: %v\n%s", err, stderr)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("psycopg program printed %q: %v", out, err)
	}
	want := map[string]any{
		"pipeline":          []any{[]any{[]any{"73.50"}}, "UPDATE 1", []any{[]any{"21.00"}}},
		"pipeline in tx":    []any{[]any{[]any{"73.50"}}, "UPDATE 1"},
		"prepared":          []any{"63.00", "73.50", "84.00", "73.50"},
		"executemany":       float64(3),
		"executemany reads": []any{"73.50", "94.50"},
		"psycopg2":          []any{[]any{"73.50"}},
	}
	for k, w := range want {
		if !reflect.DeepEqual(got[k], w) {
			t.Errorf("%s: got %v, want %v", k, got[k], w)
		}
	}
	if n := cs.metric("pgcanary_read_fallbacks_total", map[string]string{"migration": "accounts-text"}); n == 0 {
		t.Errorf("no read fell back: the failing reads were not routed to the new shape")
	}
	direct := connectDSN(t, cs.directDSN)
	var diff int
	if err := direct.QueryRow(ctx, `select count(*) from accounts a full join accounts_v2 b using (id)
		where b.id is null or a.id is null or a.owner <> b.owner or (a.balance::text <> b.balance_text and b.id <> 7)`).Scan(&diff); err != nil || diff != 0 {
		t.Fatalf("%d rows differ between the shapes (%v)", diff, err)
	}
	var written int
	if err := direct.QueryRow(ctx, `select count(*) from accounts_v2 where owner in ('pipeline', 'pipeline in tx', 'prepared', 'many', 'psycopg2')`).Scan(&written); err != nil || written != 8 {
		t.Fatalf("%d mirrored writes in accounts_v2 (%v), want 8", written, err)
	}
}
