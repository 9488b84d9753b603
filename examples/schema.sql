-- pgcanary example schema: two migrations under way.
--
--   users-split-name  users → users_v2, a new table: full_name is split into first_name and last_name.
--   orders-cents      orders gains amount_cents (bigint) next to amount (numeric): new columns of
--                     the same table.
--
-- Load it into an empty database: psql -d app -f examples/schema.sql
-- The row counts scale with psql variables: -v users=100000 -v orders=300000 (defaults 2000/6000).

\if :{?users}
\else
  \set users 2000
\endif
\if :{?orders}
\else
  \set orders 6000
\endif

create extension if not exists pgcrypto; -- gen_random_uuid() on PostgreSQL < 13

create type user_tier as enum ('free', 'pro', 'enterprise');
create type order_status as enum ('new', 'paid', 'shipped', 'cancelled');

-- The table the application uses today.
create table users (
    id          bigserial primary key,
    full_name   text not null,
    email       text not null unique,
    active      boolean not null default true,
    tier        user_tier not null default 'free',
    birthday    date,
    profile     jsonb not null default '{}',
    tags        text[] not null default '{}',
    external_id uuid not null default gen_random_uuid(),
    created_at  timestamptz not null default now()
);

-- Its new shape: the name split in two. Values made by defaults in users (id, external_id,
-- created_at) are copied by mirrored writes, so users_v2 has no defaults of its own for them.
create table users_v2 (
    id          bigint primary key,
    first_name  text not null,
    last_name   text,
    email       text not null unique,
    active      boolean not null,
    tier        user_tier not null,
    birthday    date,
    profile     jsonb not null,
    tags        text[] not null,
    external_id uuid not null,
    created_at  timestamptz not null
);

-- Same-table migration: amount_cents is added next to amount and filled by mirrored writes.
create table orders (
    id           serial primary key,
    user_id      bigint not null references users (id),
    amount       numeric(12, 2) not null,
    amount_cents bigint,
    currency     char(3) not null default 'EUR',
    status       order_status not null default 'new',
    placed_on    date not null default current_date,
    items        jsonb not null default '[]',
    note         text,
    created_at   timestamptz not null default now()
);
create index orders_user_id on orders (user_id);

-- Data: names with one, two and three parts, and a few edge cases the write map must survive.
insert into users (full_name, email, active, tier, birthday, profile, tags, created_at)
select case g % 7
           when 0 then 'Cher'
           when 1 then 'Ada Lovelace'
           when 2 then 'Grace Brewster Hopper'
           when 3 then 'Alan  Turing'            -- two spaces
           else (array['Edsger', 'Barbara', 'Donald', 'Frances', 'Ken', 'Radia'])[1 + g % 6]
                || ' ' || (array['Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson', 'Perlman'])[1 + g % 5]
       end,
       'user' || g || '@example.com',
       g % 10 <> 0,
       (array['free', 'pro', 'enterprise'])[1 + g % 3]::user_tier,
       case when g % 4 = 0 then null else date '1950-01-01' + (g * 37) % 18000 end,
       jsonb_build_object('theme', (array['dark', 'light'])[1 + g % 2], 'visits', g % 100),
       case when g % 3 = 0 then '{}' else array['tag' || g % 5, 'tag' || g % 11] end,
       timestamptz '2024-01-01 00:00:00+00' + make_interval(mins => g * 13)
from generate_series(1, :users) g;

-- Backfilled copy of users in its new shape (a real migration would run pgcanary backfill).
insert into users_v2 (id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at)
select id, split_part(full_name, ' ', 1),
       nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), ''),
       email, active, tier, birthday, profile, tags, external_id, created_at
from users;

insert into orders (user_id, amount, currency, status, placed_on, items, note, created_at)
select 1 + (g::bigint * 7919) % :users,
       round(((g::bigint * 104729) % 100000) / 100.0, 2),
       (array['EUR', 'USD', 'GBP'])[1 + g % 3],
       (array['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4]::order_status,
       date '2024-01-01' + g % 365,
       jsonb_build_array(jsonb_build_object('sku', 'SKU-' || g % 50, 'qty', 1 + g % 4)),
       case when g % 5 = 0 then 'gift' end,
       timestamptz '2024-01-01 00:00:00+00' + make_interval(mins => g * 7)
from generate_series(1, :orders) g;
update orders set amount_cents = (amount * 100)::bigint;

analyze users;
analyze users_v2;
analyze orders;
