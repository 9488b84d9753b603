// Package backfill copies the rows that exist before a migration starts from its old shape into
// its new one, through the migration's write map, while the proxy mirrors live writes.
//
// The table is walked in key order, in chunks whose size adapts so that each takes about a target
// duration (100 ms by default). Each chunk is one statement, and so one short transaction, that
//
//   - selects the next rows of the old relation after the last key copied, locking them (FOR SHARE
//     for a new table, FOR NO KEY UPDATE for new columns of the same table),
//   - writes their write-map image into the new shape (an upsert into the new table, or an UPDATE
//     of the new columns), and
//   - advances the checkpoint row in pgcanary.backfill_checkpoint.
//
// Locking the old rows is what makes the copy safe against mirrored writes: a mirrored write to a
// row locks that old row too, so either it commits first and the chunk (re-reading the row's
// latest version once the lock is granted) copies the new value, or the chunk commits first and
// the mirrored write then overwrites the copy with its own, newer image. A copy can neither be lost
// nor land on top of a newer write. Deleted rows are skipped by the lock; rows inserted later are
// the mirror's business.
//
// Because the checkpoint moves in the same transaction as the chunk, an interrupted run (Ctrl-C,
// a lost connection, a crash) resumes exactly after the last committed chunk, and running the
// command again after it finished does nothing. The upsert makes re-copying a row harmless, so
// --restart (start over from the first key) is always safe too.
//
// A row with a NULL in a key column (a unique index on nullable columns allows them) is named by
// no key: the walk skips it, and the run counts such rows once (only when a key column is
// nullable) and reports them in Result.NullKeyInOld and a warning.
package backfill
