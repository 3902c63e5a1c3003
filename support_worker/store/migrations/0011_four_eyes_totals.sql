-- Four eyes on totals (issue 21): opening a refund request sums what the customer was refunded
-- over REFUND_FOUR_EYES_WINDOW_DAYS and what their live requests ask for. These indexes keep
-- those sums to the customer's own rows.
CREATE INDEX refunds_customer_idx ON refunds (customer_id, created_at);
CREATE INDEX refund_requests_customer_idx ON refund_requests (customer_id, status);
