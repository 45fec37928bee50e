-- Rebuild segment_lapsed from the unified customer profiles: customers who agreed to marketing
-- e-mails and last ordered more than 180 days before 2025-01-01 (the generated data's "today").
DROP TABLE IF EXISTS segment_lapsed;
CREATE TABLE segment_lapsed AS
SELECT customer_id, email, first_name, last_name, phone, city, loyalty_tier, favorite_store,
       lifetime_value, last_order_date
FROM customer_profiles
WHERE marketing_opt_in = 1 AND last_order_date < date('2025-01-01', '-180 days')
ORDER BY customer_id;
