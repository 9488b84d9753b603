-- Read-equivalence corpus: reads over examples/schema.sql (users → users_v2, orders.amount_cents),
-- run by TestReadEquivalence in their client form and in the planner's read form, which must return
-- the same column names, type OIDs, parameter types and rows.
--
-- Format: one query per line. A query spanning several lines stands between two lines holding
-- only ";;". Lines starting with "--" and blank lines are ignored. A trailing "-- args: v1, v2"
-- gives the values of $1, $2, ...: integers or 'quoted text' ('' escapes a quote).
--
-- Rules that keep the comparison deterministic: an ORDER BY at the top level is compared in order,
-- so it must be a total order (ties broken by a unique key); no volatile functions; no float
-- aggregates (their result depends on the order rows are summed in); aggregates of ordered values
-- (string_agg, array_agg, json_agg) carry their own ORDER BY.

-- users: *, t.*, TABLE, qualified and quoted names
SELECT * FROM users ORDER BY id LIMIT 20
SELECT u.* FROM users u WHERE u.id BETWEEN 100 AND 140 ORDER BY u.id
TABLE users ORDER BY id LIMIT 5
SELECT users.id, users.full_name FROM users WHERE users.id < 5 ORDER BY users.id
SELECT "id", "full_name" FROM "users" WHERE "tier" = 'pro' ORDER BY "id" LIMIT 5
select ID, Full_Name from PUBLIC.Users where Id < 4 order by Id
SELECT count(*) FROM ONLY users
SELECT x.a, x.b, x.email FROM users AS x(a, b) ORDER BY x.a LIMIT 5

-- users: the migrated column full_name, edge-case names ('Cher', 'Alan  Turing', three parts)
SELECT id, full_name FROM users WHERE full_name = 'Cher' ORDER BY id
SELECT id, full_name FROM users WHERE full_name = 'Alan  Turing' ORDER BY id LIMIT 10
SELECT id FROM users WHERE full_name = $1 ORDER BY id -- args: 'Alan  Turing'
SELECT full_name, count(*) AS n FROM users GROUP BY full_name HAVING count(*) > 20 ORDER BY n DESC, full_name
SELECT DISTINCT full_name FROM users
SELECT id, split_part(full_name, ' ', 2) AS second, split_part(full_name, ' ', 3) AS third FROM users WHERE id % 7 IN (2, 3) ORDER BY id LIMIT 30
SELECT id, length(full_name), upper(full_name), lower(full_name), initcap(full_name), reverse(full_name) FROM users ORDER BY id LIMIT 25
SELECT id, string_to_array(full_name, ' ') AS parts, array_length(string_to_array(full_name, ' '), 1) AS n FROM users ORDER BY id LIMIT 30
SELECT id, regexp_replace(full_name, '\s+', ' ', 'g') AS normalized FROM users WHERE full_name ~ '\s{2}' ORDER BY id
SELECT id, full_name FROM users WHERE full_name ILIKE '%' || $1 || '%' ORDER BY id LIMIT $2 -- args: 'hop', 15
SELECT id, coalesce(nullif(split_part(full_name, ' ', 2), ''), '(none)') AS last FROM users ORDER BY id LIMIT 40
SELECT id, CASE WHEN full_name LIKE '% %' THEN 'multi' WHEN full_name = 'Cher' THEN 'mononym' ELSE 'other' END AS kind FROM users ORDER BY id LIMIT 40
SELECT md5(string_agg(full_name, ',' ORDER BY id)) AS checksum FROM users
SELECT id, full_name, NULL::text AS nothing, nullif(full_name, 'Cher') AS not_cher FROM users ORDER BY id LIMIT 15
SELECT id, full_name || ' <' || email || '>' AS contact, format('%s (%s)', full_name, tier) FROM users ORDER BY id LIMIT 15
SELECT users.id, full_name::varchar(5), CAST(id AS text) AS id_text, id::numeric / 3 FROM users ORDER BY 1 LIMIT 10
SELECT id, full_name COLLATE "C" AS n FROM users ORDER BY full_name COLLATE "C", id LIMIT 15
SELECT full_name FROM users ORDER BY full_name FETCH FIRST 3 ROWS WITH TIES
SELECT id, full_name FROM users ORDER BY full_name DESC, id LIMIT 10 OFFSET 5
SELECT $1::text || full_name AS titled FROM users WHERE id = $2 -- args: 'Dr. ', 9
SELECT * FROM users WHERE (id, full_name) IN (SELECT id, full_name FROM users WHERE id < 4) ORDER BY id

-- users: bool, enum, bigint
SELECT tier, count(*), min(full_name), max(full_name) FROM users GROUP BY tier ORDER BY tier
SELECT tier, active, count(*) FROM users GROUP BY ROLLUP (tier, active)
SELECT id FROM users WHERE tier > 'free' AND NOT active ORDER BY id
SELECT id, tier FROM users WHERE tier = $1 ORDER BY id LIMIT 10 -- args: 'pro'
SELECT min(tier), max(tier), array_agg(DISTINCT tier ORDER BY tier) FROM users
SELECT bool_and(active), bool_or(active), every(tier = 'free') FROM users WHERE full_name LIKE 'Ada%'
SELECT sum(id), avg(id), id::bigint * 1000000000000 AS big FROM users GROUP BY id HAVING id < 3

-- users: date (NULL-heavy birthday), timestamptz
SELECT id, birthday FROM users WHERE birthday IS NULL ORDER BY id LIMIT 20
SELECT count(*), count(birthday), count(*) - count(birthday) AS missing FROM users
SELECT id, birthday, birthday + 30 AS plus30, date_trunc('month', birthday)::date AS month, extract(year FROM birthday) AS y FROM users ORDER BY id LIMIT 30
SELECT id FROM users WHERE birthday BETWEEN date '1960-01-01' AND date '1970-12-31' ORDER BY birthday, id
SELECT extract(decade FROM birthday) AS decade, count(*) FROM users GROUP BY 1 ORDER BY 1 NULLS FIRST
SELECT id, created_at FROM users WHERE created_at >= timestamptz '2024-01-02 00:00:00+00' AND created_at < timestamptz '2024-01-03 00:00:00+00' ORDER BY created_at
SELECT id, created_at + interval '1 hour' AS later, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM users WHERE created_at > now() - interval '100 years' ORDER BY id LIMIT 10

-- users: jsonb profile, text[] tags, uuid external_id
SELECT id, profile->>'theme' AS theme, (profile->>'visits')::int AS visits FROM users ORDER BY id LIMIT 30
SELECT id, full_name FROM users WHERE profile @> '{"theme": "dark"}' AND (profile->'visits')::int > 90 ORDER BY id
SELECT id, jsonb_set(profile, '{name}', to_jsonb(full_name)) FROM users ORDER BY id LIMIT 10
SELECT id, tags[1] AS first_tag, cardinality(tags) FROM users ORDER BY id LIMIT 20
SELECT id FROM users WHERE 'tag3' = ANY (tags) AND tags && ARRAY['tag7', 'tag8'] ORDER BY id
SELECT t.tag, count(*) FROM users, unnest(tags) AS t(tag) GROUP BY t.tag
SELECT id, external_id FROM users ORDER BY id LIMIT 10
SELECT u.id FROM users u WHERE u.external_id = (SELECT external_id FROM users WHERE id = $1) -- args: 77
SELECT external_id::text, full_name FROM users WHERE id IN (1, 2, 3, 4, 5) ORDER BY external_id

-- users: windows
SELECT id, full_name, row_number() OVER (PARTITION BY tier ORDER BY created_at) AS rn FROM users ORDER BY id LIMIT 50
SELECT id, full_name, rank() OVER (ORDER BY full_name) AS r, dense_rank() OVER (ORDER BY full_name) AS dr FROM users ORDER BY id LIMIT 50
SELECT id, lag(full_name) OVER w, lead(full_name, 2) OVER w, first_value(full_name) OVER w FROM users WINDOW w AS (ORDER BY id) ORDER BY id LIMIT 40
SELECT DISTINCT ON (tier) tier, id, full_name FROM users ORDER BY tier, created_at DESC

-- users: self-joins and subqueries
SELECT a.id, b.id FROM users a JOIN users b ON a.full_name = b.full_name AND a.id < b.id WHERE a.id < 30 ORDER BY a.id, b.id LIMIT 50
SELECT id, full_name FROM users WHERE full_name IN (SELECT full_name FROM users WHERE id < 10) AND id < 60 ORDER BY id

-- users: whole rows through t.* inside expressions
SELECT row_to_json(u.*) FROM users u ORDER BY u.id LIMIT 5
SELECT to_jsonb(u.*) - 'external_id' FROM users u WHERE u.id < 5
SELECT row_to_json(x.*) FROM users AS x(uid, name) WHERE x.uid < 4 ORDER BY x.uid
SELECT pg_typeof(u.*)::text AS row_type, count(*) FROM users u GROUP BY 1

-- users: declined on purpose (see declined in equivalence_test.go)
SELECT u FROM users u WHERE u.id = 1
SELECT id, full_name FROM users TABLESAMPLE SYSTEM (50) REPEATABLE (1)
SELECT public.users.full_name FROM public.users WHERE public.users.id = 2

-- orders: *, numeric amount (the migrated column), char(3), NULL-heavy note
SELECT * FROM orders ORDER BY id LIMIT 20
SELECT o.* FROM orders o WHERE o.user_id = $1 ORDER BY o.id -- args: 3
SELECT id, amount, amount_cents, amount * 100 = amount_cents AS consistent FROM orders ORDER BY id LIMIT 30
SELECT sum(amount), avg(amount), min(amount), max(amount), count(*) FROM orders
SELECT status, sum(amount) AS total, round(avg(amount), 2) FROM orders GROUP BY status ORDER BY status
SELECT currency, status, sum(amount) FROM orders GROUP BY CUBE (currency, status)
SELECT id, amount FROM orders WHERE amount > $1 ORDER BY amount DESC, id LIMIT 10 -- args: 990
SELECT id, amount::text, amount::int, amount::float8, trunc(amount), round(amount, 1), ceil(amount), -amount AS neg FROM orders ORDER BY id LIMIT 20
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount), percentile_disc(0.9) WITHIN GROUP (ORDER BY amount), mode() WITHIN GROUP (ORDER BY status) FROM orders
SELECT id, note, note IS NULL AS missing FROM orders WHERE id <= 12 ORDER BY id
SELECT note, count(*), sum(amount) FROM orders GROUP BY note
SELECT count(note), count(*) FILTER (WHERE note IS NULL) FROM orders
SELECT count(*) FROM orders WHERE amount_cents IS DISTINCT FROM (amount * 100)::bigint
SELECT o.id, o.amount FROM orders o WHERE o.amount = (SELECT max(amount) FROM orders)
SELECT a.id, b.id, a.amount + b.amount AS pair FROM orders a JOIN orders b ON a.user_id = b.user_id AND a.id < b.id WHERE a.id < 50 ORDER BY a.id, b.id
SELECT array_agg(o.* ORDER BY o.id) FROM orders o WHERE o.user_id = 3

-- orders: enum status, date placed_on, timestamptz, jsonb items
SELECT status, count(*) FROM orders WHERE status < 'shipped' GROUP BY status ORDER BY status
SELECT id, status FROM orders WHERE status = $1 AND amount < $2 ORDER BY id LIMIT 10 -- args: 'paid', 300
SELECT id, placed_on, placed_on - date '2024-01-01' AS day_of_year, placed_on + interval '1 month' FROM orders ORDER BY id LIMIT 15
SELECT date_trunc('month', placed_on)::date AS month, count(*), sum(amount) FROM orders GROUP BY 1 ORDER BY 1
SELECT count(*) FROM orders WHERE (placed_on, placed_on + 7) OVERLAPS (date '2024-02-01', date '2024-02-10')
SELECT d::date AS day, count(o.id), sum(o.amount) FROM generate_series(date '2024-01-01', date '2024-01-10', interval '1 day') AS d LEFT JOIN orders o ON o.placed_on = d::date GROUP BY d ORDER BY d
SELECT id, items, items->0->>'sku' AS sku, (items->0->>'qty')::int AS qty FROM orders ORDER BY id LIMIT 20
SELECT e->>'sku' AS sku, sum((e->>'qty')::int) AS qty FROM orders, jsonb_array_elements(items) AS e GROUP BY 1
SELECT jsonb_agg(jsonb_build_object('id', id, 'amount', amount) ORDER BY id) FROM orders WHERE user_id = 10

-- orders: windows
SELECT id, amount, sum(amount) OVER (PARTITION BY user_id ORDER BY id) AS running, avg(amount) OVER (PARTITION BY status) FROM orders ORDER BY id LIMIT 40
SELECT user_id, id, amount - lag(amount) OVER (PARTITION BY user_id ORDER BY created_at) AS delta FROM orders WHERE user_id < 10 ORDER BY user_id, id

-- both: joins
SELECT u.full_name, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id <= 10 ORDER BY o.id
SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = $1 ORDER BY o.id -- args: 5
SELECT u.*, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE o.id < 8 ORDER BY o.id
SELECT * FROM users NATURAL JOIN orders
SELECT id, u.full_name, o.amount FROM users u JOIN orders o USING (id) ORDER BY id LIMIT 5
SELECT u.id, u.full_name, count(o.id) AS n, sum(o.amount) AS total FROM users u LEFT JOIN orders o ON o.user_id = u.id AND o.status = 'cancelled' GROUP BY u.id, u.full_name ORDER BY u.id LIMIT 50
SELECT u.tier, o.status, count(*), sum(o.amount) FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.tier, o.status
SELECT u.id, o.id FROM users u FULL JOIN orders o ON o.user_id = u.id AND o.amount > 999 WHERE u.id < 20 OR o.id IS NOT NULL
SELECT u.id, o.id FROM users u RIGHT JOIN orders o ON o.user_id = u.id AND u.tier = 'enterprise' WHERE o.id <= 20 ORDER BY o.id
SELECT u.full_name, o.status, rank() OVER (PARTITION BY u.id ORDER BY o.amount DESC, o.id) FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id < 10 ORDER BY u.id, o.id
SELECT u.id, array_agg(o.id ORDER BY o.id) AS order_ids, array_agg(o.note ORDER BY o.id) AS notes FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id < 15 GROUP BY u.id ORDER BY u.id
SELECT o.placed_on, u.birthday, o.placed_on - u.birthday AS days FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id < 6 ORDER BY o.id
SELECT v.name, count(u.id) FROM (VALUES ('Cher'), ('Ada Lovelace'), ('Nobody')) AS v(name) LEFT JOIN users u ON u.full_name = v.name GROUP BY v.name
SELECT u.id, t.tag, t.ord FROM users u, unnest(u.tags) WITH ORDINALITY AS t(tag, ord) WHERE u.id < 8 ORDER BY u.id, t.ord

-- both: GROUP BY a primary key, selecting other columns of the row (functional dependency)
SELECT u.id, u.full_name, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.id ORDER BY u.id LIMIT 20
SELECT o.id, o.amount, o.status FROM orders o GROUP BY o.id ORDER BY o.id LIMIT 5

-- both: LATERAL
SELECT u.full_name, x.total, x.n FROM users u, LATERAL (SELECT sum(amount) AS total, count(*) AS n FROM orders o WHERE o.user_id = u.id) x ORDER BY u.id LIMIT 25
SELECT u.id, last.id AS last_order, last.amount FROM users u CROSS JOIN LATERAL (SELECT id, amount FROM orders o WHERE o.user_id = u.id ORDER BY o.created_at DESC LIMIT 1) last ORDER BY u.id LIMIT 30
SELECT u.id, big.amount FROM users u LEFT JOIN LATERAL (SELECT amount FROM orders o WHERE o.user_id = u.id AND o.amount > 900 ORDER BY amount DESC, id LIMIT 1) big ON true ORDER BY u.id LIMIT 40

-- both: EXISTS, IN, scalar subqueries
SELECT id, full_name FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.note = 'gift' AND o.amount > 800) ORDER BY id
SELECT id FROM users u WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.status = 'shipped') ORDER BY id
SELECT full_name FROM users WHERE id IN (SELECT user_id FROM orders WHERE amount > $1) ORDER BY id -- args: 995
SELECT u.id, (SELECT max(amount) FROM orders o WHERE o.user_id = u.id) AS biggest, (SELECT count(*) FROM orders o WHERE o.user_id = u.id AND o.note IS NULL) AS no_note FROM users u ORDER BY u.id LIMIT 20
SELECT o.id, (SELECT full_name FROM users u WHERE u.id = o.user_id) AS who FROM orders o ORDER BY o.id LIMIT 20
SELECT * FROM orders WHERE user_id IN (SELECT id FROM users WHERE full_name = 'Cher') ORDER BY id LIMIT 10
VALUES ((SELECT count(*) FROM users), (SELECT sum(amount) FROM orders))

-- both: CTEs, including CTEs named like a migrated table (those references must not be rewritten)
WITH totals AS (SELECT user_id, sum(amount) AS total FROM orders GROUP BY user_id) SELECT u.full_name, t.total FROM users u JOIN totals t ON t.user_id = u.id ORDER BY t.total DESC, u.id LIMIT 10
;;
WITH big AS MATERIALIZED (SELECT * FROM orders WHERE amount > 950),
     who AS (SELECT DISTINCT u.* FROM users u JOIN big ON big.user_id = u.id)
SELECT who.full_name, count(*)
FROM who JOIN big ON big.user_id = who.id
GROUP BY who.full_name
;;
;;
WITH users AS (SELECT id, upper(email) AS full_name FROM users WHERE id < 50)
SELECT u.id, u.full_name, o.amount
FROM users u JOIN orders o ON o.user_id = u.id
ORDER BY o.id
;;
WITH orders AS (SELECT 7::bigint AS user_id, 0.5::numeric AS amount) SELECT u.id, u.full_name, o.amount FROM users u JOIN orders o ON o.user_id = u.id
;;
WITH RECURSIVE users(id, full_name) AS (
    SELECT 1::bigint, 'root'::text
    UNION ALL
    SELECT id + 1, full_name || '+' FROM users WHERE id < 5
)
SELECT u.id, u.full_name, o.amount FROM users u JOIN orders o ON o.user_id = u.id ORDER BY o.id
;;
SELECT * FROM users WHERE id IN (WITH users AS (SELECT 3::bigint AS id) SELECT id FROM users)
;;
WITH RECURSIVE chain AS (
    SELECT id, full_name, 1 AS depth FROM users WHERE id = 1
    UNION ALL
    SELECT u.id, u.full_name, c.depth + 1 FROM chain c JOIN users u ON u.id = c.id * 2 WHERE c.depth < 8
)
SELECT * FROM chain ORDER BY depth
;;

-- both: UNION, INTERSECT, EXCEPT
SELECT id, full_name FROM users WHERE id < 5 UNION SELECT user_id, status::text FROM orders WHERE id < 5
SELECT full_name FROM users WHERE tier = 'pro' INTERSECT SELECT full_name FROM users WHERE NOT active
SELECT user_id FROM orders WHERE status = 'new' EXCEPT SELECT id FROM users WHERE tier = 'free'
SELECT user_id FROM orders EXCEPT ALL SELECT id FROM users
(SELECT id, full_name FROM users ORDER BY id LIMIT 3) UNION ALL (SELECT id, full_name FROM users ORDER BY id DESC LIMIT 3) ORDER BY id

-- single-relation reads the planner flattens (router/flatten.go): output names, ORDER BY/GROUP BY
-- names that could mean an output column or an input column, unnamed expressions
SELECT full_name::varchar, email FROM users WHERE id < 20 ORDER BY id
SELECT CASE WHEN active THEN 'on' ELSE full_name END, id FROM users WHERE id < 20 ORDER BY id
SELECT CASE WHEN active THEN full_name END, id FROM users WHERE id < 20 ORDER BY id
SELECT coalesce(full_name, email), (full_name), full_name COLLATE "C" FROM users WHERE id < 20 ORDER BY id
SELECT email AS full_name, id FROM users WHERE id < 40 ORDER BY full_name, id
SELECT full_name AS email, id FROM users WHERE id < 40 ORDER BY email DESC, id
SELECT id AS n, full_name FROM users WHERE id < 40 ORDER BY full_name COLLATE "C", n
SELECT lower(full_name) AS lname, count(*) FROM users GROUP BY lname ORDER BY lname
SELECT tier AS t2, count(*) FROM users GROUP BY t2 ORDER BY 1
SELECT full_name AS tier, count(*) FROM users GROUP BY tier, full_name ORDER BY 1, 2
SELECT DISTINCT ON (tier) tier, full_name, id FROM users ORDER BY tier, id
SELECT DISTINCT ON (full_name) full_name AS tier, id FROM users WHERE id < 80 ORDER BY full_name, id
SELECT *, full_name AS again FROM users WHERE id < 10 ORDER BY id
SELECT u.*, 1 AS one FROM users u WHERE u.id < 10 ORDER BY u.id
SELECT tags[1], profile->>'plan' AS plan, id FROM users WHERE id < 30 ORDER BY id
SELECT upper(u.full_name) FROM users u WHERE u.full_name LIKE 'A%' ORDER BY 1
SELECT max(full_name), min(email), tier FROM users GROUP BY ROLLUP (tier) ORDER BY tier NULLS FIRST
SELECT id, full_name FROM users WHERE id = ANY($1) ORDER BY id -- args: '{1,2,3}'
SELECT count(*) FILTER (WHERE full_name LIKE '% %') FROM users
SELECT amount, amount * 2 AS double FROM orders WHERE amount > 10 ORDER BY id LIMIT 20
SELECT sum(amount), user_id FROM orders GROUP BY user_id ORDER BY user_id LIMIT 10
