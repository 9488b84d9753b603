// Package verify compares a migration's new shape with the write map of its old shape, and
// repairs the rows that differ.
//
// # How a comparison runs
//
// The old relation's key index is walked to cut the key space into ranges of about
// [Options.RangeRows] rows (the first range is open below and the last open above, so rows of the
// new shape outside the old key span are compared too). Each range is compared in one REPEATABLE
// READ, READ ONLY transaction, so both shapes are seen in one snapshot: mirrored writes change
// both in one transaction, so a snapshot never sees half of one. Per side the server returns
// only a row count and an order-independent hash aggregate, the sum of the 64-bit
// hashtextextended of each row's text form:
//
//	select o.n, o.h, n.n, n.h
//	from (select count(*) n, coalesce(sum(hashtextextended(row(<write-map exprs>)::text, 0)), 0)::text h
//	      from <old> where (<key>) > (<lo>) and (<key>) <= (<hi>)) o,
//	     (select count(*) n, coalesce(sum(hashtextextended(row(<new columns>)::text, 0)), 0)::text h
//	      from <new> where (<key>) > (<lo>) and (<key>) <= (<hi>)) n
//
// Comparing the text forms makes NULL and an empty string differ, and compares values as the new column's type
// prints them, which is what a mirrored write stores. A range whose counts or hashes differ is
// bisected at its median key (in the same snapshot; the other half's aggregate is the parent's
// minus the measured half's) until a part holds at most [Options.LeafRows] rows, and the part is
// compared row by row on the server:
//
//	select coalesce(o.c1, n.c1)::text, o.c1 is not null, n.c1 is not null,
//	       array[o.c2::text is distinct from n.c2::text, ...]
//	from (select <write-map exprs> as c1, c2, ... from <old> where <range>) o
//	full join (select <new columns> as c1, c2, ... from <new> where <range>) n on o.c1 = n.c1
//	where o.c1 is null or n.c1 is null or row(o.c2, ...)::text is distinct from row(n.c2, ...)::text
//
// which classifies each differing key as missing in new, extra in new, or differing (naming
// the columns). In a same-table migration both sides are the same row, so a range is one scan
// counting the rows whose stored new columns differ from their write-map expressions, and the
// differing rows are listed directly.
//
// # Repair
//
// With [Options.Repair], the differing keys of each range are re-synced in one transaction that
// first locks the old rows (SELECT ... FOR UPDATE), so a concurrent mirrored write can neither be
// lost nor overwritten by a stale copy, then upserts write-map(old) into new, deletes from new
// the keys old no longer has, or (same table) updates the new columns from their expressions.
// The repaired keys are then compared again; what still differs is counted in Result.Remaining.
//
// # Rows with a NULL key
//
// A row with a NULL in a key column (a unique index on nullable columns allows them) is named by
// no key, so it can be neither compared nor repaired: every range leaves it out, and one count
// per side (only when a key column is nullable) reports such rows in Result.NullKeyInOld and
// NullKeyInNew, with a warning. While any exist, [Result.Equal] is false.
package verify
