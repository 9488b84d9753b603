-- A schema for broken.yaml: every check `pgcanary check` makes has something to find here.
create table b_users (id int primary key, full_name text not null, email text, score int);
-- No unique index on id; nick is NOT NULL without default and nothing fills it; score is missing.
create table b_users_v2 (id int, first_name text not null, nick text not null, email text);
-- The old side has no unique index on the key.
create table b_nokey_old (id int, v text);
create table b_nokey_new (id int primary key, v text);
-- Neither side has the key column.
create table b_keyless (id int primary key, v text);
create table b_keyless_v2 (id int primary key, v text);
-- Same-table migration whose write map reads a serial column.
create table b_orders (id serial primary key, amount numeric not null, cents bigint, id_copy bigint);
-- A view cannot be a migration's relation.
create view b_view as select id, v from b_keyless;
-- A role that writes the old relation but only reads the new one.
create role b_writer login;
grant select, insert, update, delete on b_users to b_writer;
grant select on b_users_v2 to b_writer;
-- A key whose unique indexes allow NULLs: code is nullable in the old relation, tenant in the new.
create table b_nullable (tenant int not null, code text, v text, unique (tenant, code));
create table b_nullable_v2 (tenant int, code text not null, v text, unique (tenant, code));
