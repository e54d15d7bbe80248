DROP INDEX buyer_scans_open_due;
DROP INDEX order_steps_open_due;
