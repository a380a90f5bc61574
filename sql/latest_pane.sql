-- Latest pane per window and key, for dashboards over WriteToBigQuery's windowed results.
--
-- A windowed Combine emits one row per (window, key, pane): early panes while the window is
-- open, the ON_TIME pane when the watermark passes its end, and LATE panes for late data within
-- `allowed_lateness`. With accumulating panes the latest pane holds the whole window's result;
-- a redelivered or replayed pane has the same `sluice_id` and `pane_index`, so it collapses too.
--
-- Placeholders (replace before running; see docs/bigquery.md):
--   ${view}           the view to create, e.g. `my-project.dashboards.recipe_views_latest`
--   ${results_table}  the table WriteToBigQuery writes, e.g. `my-project.lake.recipe_views`
--   ${keys}           the Combine's group_by fields, comma-separated, e.g. recipe_id, country
CREATE OR REPLACE VIEW ${view} AS
SELECT * EXCEPT (pane_rank)
FROM (
  SELECT
    *,
    ROW_NUMBER() OVER (
      PARTITION BY window_start, ${keys}
      ORDER BY pane_index DESC
    ) AS pane_rank
  FROM ${results_table}
)
WHERE pane_rank = 1;
