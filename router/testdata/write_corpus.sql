-- Write-equivalence corpus: writes over examples/schema.sql (users → users_v2, orders.amount_cents),
-- run by TestWriteEquivalence IN ORDER, each in its client form and then in the planner's mirrored
-- form (same transaction, the client form rolled back to a savepoint, sequences reset). The
-- mirrored form must give the client the same rows and command tag, change the statement's own
-- relation the same way, and leave the other shape equal to the write map of the old one (full-table
-- comparison). The mirrored run is committed, so later statements see its effects.
--
-- Format: one statement per line. A statement spanning several lines stands between two lines
-- holding only ";;". Lines starting with "--" and blank lines are ignored. A trailing
-- "-- args: v1, v2" gives the values of $1, $2, ...: integers or 'quoted text' ('' escapes a
-- quote). A trailing "-- error: SQLSTATE" (after any args) marks a write the client form must
-- fail with that SQLSTATE; the mirrored form must fail with the same one.
--
-- Statements the planner is expected to pass through unmirrored (or that need no mirror) are
-- listed, with the reason, in unmirroredWrites in write_equivalence_test.go: their client form is
-- run and rolled back (or, needing no mirror, committed and checked).
--
-- Fixtures made by the test: staging(id, name, mail, ok) with rows 50..53. The example data has
-- users 1..500 (every one has orders, so deletes target rows the corpus inserted) and orders
-- 1..1500. Ids written explicitly stay far from the sequences (800000+, 900000+).

-- ===== users → users_v2, forward (capture): INSERT =====
-- VALUES, single row, serial id / gen_random_uuid() external_id / now() created_at from defaults
INSERT INTO users (full_name, email) VALUES ('Ada Lovelace', 'w1@example.com')
INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id, created_at, external_id -- args: 'Grace Brewster Hopper', 'w2@example.com'
-- VALUES, several rows, explicit DEFAULT items, RETURNING *
;;
INSERT INTO users (full_name, email, tier, tags)
VALUES ('Cher', 'w3@example.com', 'pro', '{a,b}'),
       ('Alan  Turing', 'w4@example.com', DEFAULT, DEFAULT),
       ('Ken Thompson', 'w5@example.com', 'enterprise', '{}')
RETURNING *
;;
INSERT INTO users AS u (full_name, email, birthday, profile) VALUES ('Donald Knuth', 'w6@example.com', '1938-01-10', '{"x": 1}') RETURNING u.id, upper(u.full_name) AS shout, u.birthday
-- INSERT ... SELECT
INSERT INTO users (full_name, email) SELECT 'Copy ' || full_name, 'copy' || id || '@example.com' FROM users WHERE id <= 5
INSERT INTO users (full_name, email, active) SELECT full_name, 'c2-' || email, false FROM users WHERE id BETWEEN 10 AND 12 RETURNING id, full_name, active
-- every column given, no default used
INSERT INTO users (id, full_name, email, active, tier, birthday, profile, tags, external_id, created_at) VALUES (800001, 'Explicit Everything', 'w7@example.com', false, 'pro', '2000-02-29', '{"k": "v"}', '{x}', '00000000-0000-0000-0000-000000000001', '2020-01-01 00:00:00+00')
-- no column list (positional), DEFAULT for the serial
INSERT INTO users VALUES (DEFAULT, 'Positional Name', 'w8@example.com') RETURNING id, tier, active, profile, tags
-- ON CONFLICT DO NOTHING: nothing inserted, one of two inserted
INSERT INTO users (full_name, email) VALUES ('Dup', 'user1@example.com') ON CONFLICT DO NOTHING
INSERT INTO users (full_name, email) VALUES ('Radia Perlman', 'w9@example.com'), ('Dup', 'user2@example.com') ON CONFLICT (email) DO NOTHING RETURNING full_name
-- ON CONFLICT DO UPDATE with EXCLUDED
INSERT INTO users (id, full_name, email) VALUES (1, 'Ada King Lovelace', 'user1@example.com') ON CONFLICT (id) DO UPDATE SET full_name = EXCLUDED.full_name
INSERT INTO users (full_name, email, tier) VALUES ('Barbara Liskov', 'user2@example.com', 'enterprise') ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name || ' Jr', tier = EXCLUDED.tier RETURNING id, full_name, tier
INSERT INTO users (full_name, email) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET active = NOT users.active RETURNING id, active -- args: 'X', 'user3@example.com'
INSERT INTO users (full_name, email) VALUES ('Mixed Upsert', 'w14@example.com'), ('Ignored Name', 'user8@example.com') ON CONFLICT ON CONSTRAINT users_email_key DO UPDATE SET tags = users.tags || EXCLUDED.tags, created_at = now() RETURNING email, tags
-- the upsert idiom that tells an insert from an update: a system column in RETURNING
INSERT INTO users (full_name, email) VALUES ('Upsert Idiom', 'user9@example.com'), ('Upsert New', 'w15@example.com') ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name RETURNING email, (xmax = 0) AS inserted
-- schema-qualified target
INSERT INTO public.users (full_name, email) VALUES ('Schema Qualified', 'w10@example.com') RETURNING users.id, users.full_name
-- key update through ON CONFLICT DO UPDATE (the row 800001 has no orders)
INSERT INTO users (id, full_name, email) VALUES (800001, 'Key Moves', 'w7@example.com') ON CONFLICT (id) DO UPDATE SET id = 800002

-- ===== users → users_v2, forward (capture): UPDATE =====
UPDATE users SET email = $1 WHERE id = $2 -- args: 'renamed4@example.com', 4
UPDATE users SET full_name = 'Frances  Allen' WHERE id = 5
UPDATE users u SET full_name = upper(u.full_name) WHERE u.id = $1 RETURNING u.full_name -- args: 6
UPDATE users SET full_name = full_name || ' ' || tier, active = NOT active WHERE id BETWEEN 20 AND 40 AND id % 3 = 0
UPDATE users SET tags = array_append(tags, 'w'), profile = profile || '{"edited": true}' WHERE tier = 'pro' AND id < 60 RETURNING id, tags, profile
UPDATE users SET tier = DEFAULT, birthday = NULL, profile = DEFAULT WHERE id IN (41, 42, 43)
-- volatile values assigned by the client: the mirror must copy, not recompute
UPDATE users SET created_at = now(), external_id = gen_random_uuid() WHERE id = 44 RETURNING id, created_at
UPDATE users SET full_name = s.name FROM staging s WHERE s.id = users.id
UPDATE users u SET email = 'j-' || u.email FROM users_v2 v WHERE v.id = u.id AND v.last_name IS NULL AND u.id < 100
UPDATE users SET full_name = 'Nobody Here' WHERE id = -1
UPDATE users SET active = $1 WHERE full_name = $2 RETURNING id -- args: 'false', 'Ken Thompson'
UPDATE ONLY users SET birthday = birthday + 1 WHERE birthday IS NOT NULL AND id < 30
UPDATE users SET full_name = (SELECT max(full_name) FROM users_v2 v JOIN users w ON w.id = v.id WHERE v.id < 3) WHERE id = 45 RETURNING full_name
-- whole-row value in RETURNING
UPDATE users SET active = true WHERE id = 7 RETURNING users
-- schema-qualified column in RETURNING
UPDATE public.users SET tier = 'pro' WHERE id = 8 RETURNING public.users.id, tier

-- ===== client CTEs (capture) =====
WITH picked AS (SELECT id FROM users WHERE full_name = 'Cher' AND id < 80) UPDATE users SET full_name = 'Cher Sarkisian' WHERE id IN (SELECT id FROM picked)
WITH src(name, mail) AS (VALUES ('Cte Insert', 'w11@example.com'), ('Cte Two Parts', 'w12@example.com')) INSERT INTO users (full_name, email) SELECT name, mail FROM src RETURNING id, full_name
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) INSERT INTO users (full_name, email) SELECT 'Rec ' || i, 'rec' || i || '@example.com' FROM n
WITH victims AS (SELECT id FROM users WHERE email LIKE 'rec%') DELETE FROM users WHERE id IN (SELECT id FROM victims) RETURNING full_name
WITH v AS MATERIALIZED (SELECT id, first_name FROM users_v2 WHERE id BETWEEN 60 AND 62) UPDATE users u SET profile = jsonb_build_object('first', v.first_name) FROM v WHERE v.id = u.id

-- ===== users → users_v2, forward (capture): DELETE =====
DELETE FROM users WHERE email = $1 -- args: 'w1@example.com'
DELETE FROM users WHERE email LIKE 'copy%@example.com' RETURNING *
DELETE FROM users u USING staging s WHERE s.mail = u.email
DELETE FROM users WHERE id IN (SELECT id FROM users WHERE email LIKE 'c2-%')
DELETE FROM users WHERE id = -1 RETURNING id
DELETE FROM ONLY public.users AS x WHERE x.email IN ('w9@example.com', 'w10@example.com') RETURNING x.id, x.full_name

-- ===== expected unmirrored (see unmirroredWrites): client form run and rolled back =====
MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN UPDATE SET full_name = s.name
UPDATE users SET id = id + 1000 WHERE id = 800002
UPDATE users SET email = s.mail FROM staging s WHERE s.id = users.id AND s.ok RETURNING users.id
DELETE FROM users u USING staging s WHERE s.mail = u.email RETURNING u.id
WITH d AS (DELETE FROM users WHERE id = -5 RETURNING *) SELECT * FROM d
UPDATE users SET (email, active) = ('multi@example.com', false) WHERE id = 800002
WITH pgcanary_w AS (SELECT 1) DELETE FROM users WHERE id = -1

-- ===== users_v2 → users, reverse (capture through the read map) =====
INSERT INTO users_v2 (id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at) VALUES (900001, 'Edsger', 'Dijkstra', 'r1@example.com', true, 'pro', NULL, '{}', '{}', gen_random_uuid(), now())
INSERT INTO users_v2 (id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at) VALUES ($1, $2, NULL, $3, false, 'free', '1990-05-05', '{"r": 2}', '{r}', '00000000-0000-0000-0000-000000000002', now()) RETURNING id, first_name, last_name -- args: 900002, 'Prince', 'r2@example.com'
;;
INSERT INTO users_v2 (id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at)
SELECT 900000 + id, first_name, last_name, 'rs' || email, active, tier, birthday, profile, tags, external_id, created_at
FROM users_v2 WHERE id BETWEEN 100 AND 104
;;
INSERT INTO users_v2 (id, first_name, last_name, email, active, tier, profile, tags, external_id, created_at) VALUES (900001, 'Edsger', 'W Dijkstra', 'r1@example.com', true, 'pro', '{}', '{}', gen_random_uuid(), now()) ON CONFLICT (id) DO UPDATE SET last_name = EXCLUDED.last_name RETURNING id, last_name
INSERT INTO users_v2 (id, first_name, email, active, tier, profile, tags, external_id, created_at) VALUES (900002, 'Other', 'r2@example.com', true, 'pro', '{}', '{}', gen_random_uuid(), now()) ON CONFLICT DO NOTHING
UPDATE users_v2 SET last_name = $1 WHERE id = $2 -- args: 'Lovelace-King', 1
UPDATE users_v2 SET first_name = 'Grace', last_name = 'Hopper' WHERE id = 900002 RETURNING *
UPDATE users_v2 v SET email = 'rv-' || v.email FROM users u WHERE u.id = v.id AND u.id BETWEEN 200 AND 205
WITH t AS (SELECT id FROM users_v2 WHERE id > 900100) UPDATE users_v2 SET active = false WHERE id IN (SELECT id FROM t) RETURNING id, active
DELETE FROM users_v2 WHERE id = 900001
DELETE FROM users_v2 WHERE id > 900100 RETURNING id, first_name
DELETE FROM users_v2 v USING staging s WHERE v.email = s.mail
UPDATE users_v2 SET id = 900009 WHERE id = 900002

-- ===== orders: same-table migration (augment), forward: amount → amount_cents =====
UPDATE orders SET amount = $1 WHERE id = $2 -- args: '12.34', 1
UPDATE orders SET amount = amount * 1.1, status = 'paid' WHERE user_id = $1 RETURNING id, amount, amount_cents -- args: 3
UPDATE orders SET amount = round(amount / 3, 2) WHERE id BETWEEN 10 AND 20
UPDATE orders SET amount = amount + 0.005 WHERE id BETWEEN 21 AND 30 RETURNING amount, amount_cents
UPDATE orders o SET amount = o.amount + u.id FROM users u WHERE u.id = o.user_id AND o.id BETWEEN 31 AND 40
UPDATE orders SET amount = amount / 7 WHERE id BETWEEN 41 AND 50 RETURNING id, amount, amount_cents
UPDATE orders SET amount = 1.005::float8 WHERE id = 51
INSERT INTO orders (user_id, amount) VALUES ($1, $2) -- args: 7, '19.99'
INSERT INTO orders (user_id, amount, note) VALUES (1, 10.5, 'a'), (2, '20.255', NULL) RETURNING id, amount, amount_cents, created_at, placed_on
INSERT INTO orders (user_id, amount) SELECT user_id, amount * 2 FROM orders WHERE id < 10 RETURNING id, amount_cents
INSERT INTO orders (user_id, amount, currency, status) VALUES (5, 7.77, 'USD', 'shipped') RETURNING *
INSERT INTO orders VALUES (1600, 6, 8.88) RETURNING id, amount_cents, currency
INSERT INTO orders (id, user_id, amount) VALUES (1, 1, 5) ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount
INSERT INTO orders (id, user_id, amount) VALUES (2, 1, 6.5) ON CONFLICT (id) DO UPDATE SET amount = orders.amount + EXCLUDED.amount RETURNING id, amount, amount_cents
INSERT INTO orders (id, user_id, amount) VALUES (3, 1, 6.5) ON CONFLICT DO NOTHING
WITH src AS (SELECT user_id, amount FROM orders WHERE id BETWEEN 52 AND 54) INSERT INTO orders (user_id, amount) SELECT user_id, amount + 1 FROM src RETURNING amount_cents
INSERT INTO orders (user_id, amount) SELECT 1, '10.50'
INSERT INTO orders (user_id, amount) SELECT $1, $2 -- args: 2, '3.30'

-- ===== orders: augment, reverse: amount_cents → amount =====
UPDATE orders SET amount_cents = 1234 WHERE id = 60
UPDATE orders SET amount_cents = amount_cents + 1 WHERE id BETWEEN 61 AND 70 RETURNING id, amount, amount_cents
UPDATE orders SET amount_cents = $1 WHERE user_id = $2 -- args: 999, 9
INSERT INTO orders (id, user_id, amount, amount_cents) VALUES (4, 1, 1, 100) ON CONFLICT (id) DO UPDATE SET amount_cents = EXCLUDED.amount_cents + 1 RETURNING amount, amount_cents

-- ===== orders: unmirrored as expected, or needing no mirror =====
UPDATE orders SET amount = random() * 100 WHERE id = 71
UPDATE orders SET amount = (SELECT max(amount) FROM orders) WHERE id = 72
UPDATE orders SET amount = (SELECT amount FROM orders WHERE id > 72 LIMIT 1) WHERE id = 72
UPDATE orders SET amount = (SELECT max(amount) * random() FROM orders) WHERE id = 72
INSERT INTO orders (user_id, amount) VALUES (1, (SELECT min(amount) FROM orders WHERE amount > 0))
INSERT INTO orders VALUES (DEFAULT, 4, 3.21) RETURNING id, amount_cents
WITH up AS (UPDATE orders SET amount = 1 WHERE id = 73 RETURNING id) SELECT count(*) FROM up
UPDATE orders SET status = 'cancelled' WHERE id = 74
DELETE FROM orders WHERE id BETWEEN 1400 AND 1405 RETURNING id
INSERT INTO orders (user_id, amount, amount_cents) VALUES (1, 2.50, 250)

-- ===== client forms that fail: the mirrored form must fail the same way =====
INSERT INTO users (full_name, email) VALUES ('Dup', 'user10@example.com') -- error: 23505
UPDATE users SET full_name = NULL WHERE id = 9 -- error: 23502
INSERT INTO orders (user_id, amount) VALUES (999999, 1) -- error: 23503
UPDATE orders SET amount = 1e12 WHERE id = 100 -- error: 22003
INSERT INTO orders (user_id, amount) VALUES (1, 'abc') -- error: 22P02
INSERT INTO orders (user_id, amount, currency) VALUES (1, 5, 'EURO') -- error: 22001

-- ===== TRUNCATE (last: it empties the tables) =====
TRUNCATE users_v2
TRUNCATE users CASCADE
