-- placeholder until pgbase lands
-- step 1: placeholder
SELECT 1;
