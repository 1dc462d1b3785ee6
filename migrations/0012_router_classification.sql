-- The router classifies a submission in its projection and announces it (`workload.queued`)
-- from the placement cycle: in the same append as its placement when it fits at once, alone
-- when it has to wait. Until then the row carries the classification, and the reason the
-- queued event will give.
ALTER TABLE router_queue ADD COLUMN class_reason TEXT;
