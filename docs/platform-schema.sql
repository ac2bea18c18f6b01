-- The StoreFlow platform tables that the jobs read and write: what StoreFlow Ops expects
-- to find in the database it is pointed at. PostgreSQL flavour. On SQLite the same tables
-- use TEXT for ids and timestamps (UTC, SQLAlchemy's DateTime text format
-- 'YYYY-MM-DD HH:MM:SS[.ffffff]') and NUMERIC for money.
--
-- In production these tables belong to the platform: StoreFlow Ops never creates, alters
-- or drops them (only `storeflow-ops demo` does, in its own file). Its own tables carry
-- the prefix ops_ and are created by `storeflow-ops db upgrade`. Columns not listed here
-- may exist and are left alone.
--
-- jobs/db.py declares the same tables (`platform`), as the jobs see them; the tests and
-- the demo create them from there. tests/test_platform_schema.py checks that this file
-- and those declarations agree (columns, types, NULLs, defaults, keys, indexes). The
-- REFERENCES below are the platform's own; the jobs do not rely on them, and jobs/db.py
-- leaves them out.

CREATE TABLE tenants (
    id           text PRIMARY KEY,              -- UUID as text
    name         text NOT NULL,
    email        text NOT NULL,                 -- where the tenant's notices go
    status       text NOT NULL DEFAULT 'active',-- active | expired | suspended | cancelled
    expire_date  timestamptz NULL,              -- end of the paid period; NULL = no expiry
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customers (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(id),
    email       text NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE products (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(id),
    name        text NOT NULL,
    price       numeric(12,2) NOT NULL
);

CREATE TABLE orders (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants(id),
    customer_id     text NULL,
    total_amount    numeric(12,2) NOT NULL,
    payment_status  text NOT NULL,              -- paid | pending | failed | refunded
    created_at      timestamptz NOT NULL
);

-- No foreign keys below: orphans exist in real data, and removing them is the cleanup job's work.
CREATE TABLE order_products (
    id          text PRIMARY KEY,
    order_id    text NOT NULL,
    product_id  text NOT NULL,
    quantity    integer NOT NULL,
    price       numeric(12,2) NOT NULL
);

CREATE TABLE cart_items (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL,
    product_id   text NOT NULL,
    customer_id  text NULL,
    quantity     integer NOT NULL,
    created_at   timestamptz NOT NULL
);

CREATE INDEX orders_tenant_created_idx ON orders (tenant_id, created_at);
CREATE INDEX customers_tenant_created_idx ON customers (tenant_id, created_at);
CREATE INDEX order_products_order_idx ON order_products (order_id);
CREATE INDEX cart_items_created_idx ON cart_items (created_at);
CREATE INDEX cart_items_product_idx ON cart_items (product_id);
CREATE INDEX tenants_expire_idx ON tenants (expire_date);
