-- The demo database served by the `sqlite` reference server in the README's quickstart.
-- demo.db is built from this file: python3 -c "import sqlite3; sqlite3.connect('examples/demo.db').executescript(open('examples/demo.sql').read())"
CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  email TEXT NOT NULL UNIQUE,
  country TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE products (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  price_cents INTEGER NOT NULL,
  tags TEXT -- a JSON array
);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers(id),
  product_id INTEGER NOT NULL REFERENCES products(id),
  quantity INTEGER NOT NULL,
  ordered_at TEXT NOT NULL
);
INSERT INTO customers VALUES
  (1, 'Ada Lovelace', 'ada@example.com', 'GB', '2026-01-04'),
  (2, 'Grace Hopper', 'grace@example.com', 'US', '2026-02-11'),
  (3, 'Margaret Hamilton', 'margaret@example.com', 'US', '2026-03-20'),
  (4, 'Hedy Lamarr', 'hedy@example.com', 'AT', '2026-04-02');
INSERT INTO products VALUES
  (1, 'Analytical Engine', 1999900, '["hardware","vintage"]'),
  (2, 'Compiler', 4900, '["software"]'),
  (3, 'Guidance Computer', 899900, '["hardware","space"]'),
  (4, 'Frequency Hopper', 15900, '["radio"]');
INSERT INTO orders VALUES
  (1, 1, 1, 1, '2026-05-01'),
  (2, 2, 2, 3, '2026-05-03'),
  (3, 3, 3, 1, '2026-06-12'),
  (4, 4, 4, 2, '2026-07-07'),
  (5, 2, 4, 1, '2026-08-19');
CREATE VIEW revenue_by_customer AS
  SELECT c.name, sum(p.price_cents * o.quantity) AS revenue_cents
  FROM orders o JOIN customers c ON c.id = o.customer_id JOIN products p ON p.id = o.product_id
  GROUP BY c.name;
