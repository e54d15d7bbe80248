DROP INDEX order_moves_order;
DROP INDEX orders_seller_queue;
