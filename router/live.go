package router

import (
	"sync"
	"sync/atomic"

	"github.com/pgcanary/pgcanary/config"
)

// Live plans against whatever configuration generation is current. A migration lives in one
// database, so each database a session connects to gets its own catalog (built once per
// generation): a table of the same name in another database is not migrated.
type Live struct {
	store   *config.Store
	planner *Planner
	mu      sync.Mutex // serializes building catalogs
	cats    atomic.Pointer[liveCatalogs]
}

// liveCatalogs are one generation's catalogs by database; replaced, never changed, once published.
type liveCatalogs struct {
	generation int64
	byDB       map[string]*Catalog
}

// NewLive plans with planner against the generations in store.
func NewLive(store *config.Store, planner *Planner) *Live {
	return &Live{store: store, planner: planner}
}

// Plan plans sql for a session of database, or returns nil when the current generation
// configures no migration there (the proxy then relays everything untouched).
func (l *Live) Plan(database, searchPath, user, sql string) *Plan {
	cat := l.catalog(database)
	if cat == nil {
		return nil
	}
	return l.planner.Plan(cat, searchPath, user, sql)
}

// Generation returns the current generation's number (0 before the first).
func (l *Live) Generation() int64 {
	if g := l.store.Current(); g != nil {
		return g.Number
	}
	return 0
}

// Active reports whether the current generation configures a migration in database.
func (l *Live) Active(database string) bool { return l.catalog(database) != nil }

func (l *Live) catalog(database string) *Catalog {
	gen := l.store.Current()
	if gen == nil || len(gen.Catalog) == 0 {
		return nil
	}
	if cs := l.cats.Load(); cs != nil && cs.generation == gen.Number {
		if cat, ok := cs.byDB[database]; ok {
			return cat
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	cs := l.cats.Load()
	next := &liveCatalogs{generation: gen.Number, byDB: map[string]*Catalog{}}
	if cs != nil && cs.generation == gen.Number {
		for db, cat := range cs.byDB {
			next.byDB[db] = cat
		}
	}
	cat, ok := next.byDB[database]
	if !ok {
		cat = NewCatalogFor(gen, database)
		if cat.empty() {
			cat = nil
		}
		next.byDB[database] = cat
		l.cats.Store(next)
	}
	return cat
}
