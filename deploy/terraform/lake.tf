# The lake's tables for Athena, as deploy/cloudformation/classpulse.yaml makes them (docs/lake.md,
# "Querying"): a Glue database and five external tables over the lake's prefix, with partition
# projection on the Hive-style keys, so new days and hours are queryable at once, with no
# crawler and no MSCK REPAIR. tests/lake_tables.rs checks each table's columns against what the
# code writes.

variable "lake_bucket" {
  description = "S3 bucket of the lake (CLASSPULSE_LAKE_URL s3://BUCKET/PREFIX)"
  type        = string
}

variable "lake_prefix" {
  description = "Prefix of the lake in the bucket"
  type        = string
  default     = "classpulse"
}

variable "lake_database" {
  description = "The Glue database of the lake's tables"
  type        = string
  default     = "classpulse"
}

variable "lake_start_date" {
  description = "The lake's first day (YYYY-MM-DD): partition projection spans it to today"
  type        = string
  default     = "2026-01-01"
}

locals {
  lake_columns = {
    events = [
      { name = "event_id", type = "string" },
      { name = "event_type", type = "string" },
      { name = "event_created", type = "timestamp" },
      { name = "studio_id", type = "string" },
      { name = "class_id", type = "string" },
      { name = "member_id", type = "string" },
      { name = "device_id", type = "string" },
      { name = "schema_version", type = "int" },
      { name = "bpm", type = "double" },
      { name = "speed_kph", type = "double" },
      { name = "incline_pct", type = "double" },
      { name = "distance_m", type = "double" },
      { name = "calories", type = "double" },
      { name = "stroke_rate_spm", type = "double" },
      { name = "watts", type = "double" },
      { name = "cadence_rpm", type = "double" },
      { name = "weight_kg", type = "double" },
      { name = "exercise", type = "string" },
      { name = "reps", type = "int" },
      { name = "event_data", type = "string" },
      { name = "source", type = "string" },
      { name = "stream", type = "string" },
      { name = "partition", type = "int" },
      { name = "position", type = "bigint" },
      { name = "ingested_at", type = "timestamp" },
      { name = "late", type = "boolean" },
    ]
    dead_letters = [
      { name = "reason", type = "string" },
      { name = "detail", type = "string" },
      { name = "source", type = "string" },
      { name = "stream", type = "string" },
      { name = "partition", type = "bigint" },
      { name = "position", type = "bigint" },
      { name = "index", type = "bigint" },
      { name = "received_at", type = "string" },
      { name = "raw", type = "string" },
      { name = "raw_base64", type = "string" },
    ]
    classes = [
      { name = "studio_id", type = "string" },
      { name = "class_id", type = "string" },
      { name = "final", type = "boolean" },
      { name = "members", type = "bigint" },
      { name = "events", type = "struct<heart_rate:bigint,treadmill:bigint,rower:bigint,bike:bigint,free_weights:bigint>" },
      { name = "first_event", type = "string" },
      { name = "last_event", type = "string" },
      { name = "hr_samples", type = "bigint" },
      { name = "hr_avg", type = "double" },
      { name = "zone_seconds", type = "array<double>" },
      { name = "effort_points", type = "double" },
      { name = "distance_m", type = "double" },
      { name = "calories", type = "double" },
      { name = "calories_hr", type = "double" },
      { name = "trimp", type = "double" },
      { name = "work_kj", type = "double" },
      { name = "sets", type = "bigint" },
      { name = "reps_total", type = "bigint" },
      { name = "volume_kg", type = "double" },
      { name = "leaderboard_effort", type = "array<struct<member_id:string,alias:string,value:double>>" },
      { name = "leaderboard_work", type = "array<struct<member_id:string,alias:string,value:double>>" },
      { name = "leaderboard_treadmill", type = "array<struct<member_id:string,alias:string,value:double>>" },
      { name = "leaderboard_rower", type = "array<struct<member_id:string,alias:string,value:double>>" },
      { name = "leaderboard_bike", type = "array<struct<member_id:string,alias:string,value:double>>" },
      { name = "leaderboard_hidden", type = "bigint" },
      { name = "leaderboard_distance", type = "array<struct<member_id:string,alias:string,value:double>>" },
      { name = "positions", type = "struct<partition:string,first_offset:bigint,last_offset:bigint>" },
    ]
    members = [
      { name = "studio_id", type = "string" },
      { name = "class_id", type = "string" },
      { name = "member_id", type = "string" },
      { name = "alias", type = "string" },
      { name = "final", type = "boolean" },
      { name = "events", type = "struct<heart_rate:bigint,treadmill:bigint,rower:bigint,bike:bigint,free_weights:bigint>" },
      { name = "hr_samples", type = "bigint" },
      { name = "hr_min", type = "double" },
      { name = "hr_max", type = "double" },
      { name = "hr_avg", type = "double" },
      { name = "hr_max_used", type = "bigint" },
      { name = "hr_max_source", type = "string" },
      { name = "hr_max_observed", type = "bigint" },
      { name = "zone_basis", type = "string" },
      { name = "hr_pct_avg", type = "double" },
      { name = "hr_pct_peak", type = "double" },
      { name = "hr_current", type = "double" },
      { name = "hr_pct_current", type = "double" },
      { name = "zone_current", type = "bigint" },
      { name = "zone_seconds", type = "array<double>" },
      { name = "effort_points", type = "double" },
      { name = "distance_m", type = "double" },
      { name = "calories", type = "double" },
      { name = "calories_hr", type = "double" },
      { name = "trimp", type = "double" },
      { name = "work_kj", type = "double" },
      { name = "profile_missing", type = "array<string>" },
      { name = "leaderboard", type = "boolean" },
      { name = "treadmill", type = "struct<events:bigint,distance_m:double,calories:double,avg_speed_kph:double,max_speed_kph:double,avg_watts:double,max_watts:double,avg_cadence_rpm:double,max_cadence_rpm:double,avg_stroke_rate_spm:double,max_stroke_rate_spm:double,work_kj:double,split_500m_s:double>" },
      { name = "rower", type = "struct<events:bigint,distance_m:double,calories:double,avg_speed_kph:double,max_speed_kph:double,avg_watts:double,max_watts:double,avg_cadence_rpm:double,max_cadence_rpm:double,avg_stroke_rate_spm:double,max_stroke_rate_spm:double,work_kj:double,split_500m_s:double>" },
      { name = "bike", type = "struct<events:bigint,distance_m:double,calories:double,avg_speed_kph:double,max_speed_kph:double,avg_watts:double,max_watts:double,avg_cadence_rpm:double,max_cadence_rpm:double,avg_stroke_rate_spm:double,max_stroke_rate_spm:double,work_kj:double,split_500m_s:double>" },
      { name = "sets", type = "bigint" },
      { name = "reps_total", type = "bigint" },
      { name = "volume_kg", type = "double" },
    ]
    minutes = [
      { name = "studio_id", type = "string" },
      { name = "class_id", type = "string" },
      { name = "minute", type = "string" },
      { name = "final", type = "boolean" },
      { name = "events", type = "bigint" },
      { name = "members_active", type = "bigint" },
      { name = "hr_avg", type = "double" },
      { name = "distance_m", type = "double" },
    ]
  }

  # Each table: its folder under the prefix, whether it is partitioned by hour, its format.
  lake_tables = {
    events       = { folder = "events", hourly = true, parquet = true }
    dead_letters = { folder = "dead-letters", hourly = true, parquet = false }
    classes      = { folder = "aggregates/classes", hourly = false, parquet = false }
    members      = { folder = "aggregates/members", hourly = false, parquet = false }
    minutes      = { folder = "aggregates/minutes", hourly = false, parquet = false }
  }

  projection_dt = {
    "projection.enabled"          = "true"
    "projection.dt.type"          = "date"
    "projection.dt.format"        = "yyyy-MM-dd"
    "projection.dt.range"         = "${var.lake_start_date},NOW"
    "projection.dt.interval"      = "1"
    "projection.dt.interval.unit" = "DAYS"
  }

  projection_hour = {
    "projection.hour.type"   = "integer"
    "projection.hour.range"  = "0,23"
    "projection.hour.digits" = "2"
  }
}

resource "aws_glue_catalog_database" "lake" {
  name        = var.lake_database
  description = "classpulse's lake of performance events, dead letters and class results."
}

resource "aws_glue_catalog_table" "lake" {
  for_each      = local.lake_tables
  name          = each.key
  database_name = aws_glue_catalog_database.lake.name
  table_type    = "EXTERNAL_TABLE"

  parameters = merge(
    { classification = each.value.parquet ? "parquet" : "json" },
    local.projection_dt,
    each.value.hourly ? local.projection_hour : {},
    {
      "storage.location.template" = "s3://${var.lake_bucket}/${var.lake_prefix}/${each.value.folder}/dt=$${dt}${each.value.hourly ? "/hour=$${hour}" : ""}"
    },
  )

  partition_keys {
    name = "dt"
    type = "string"
  }

  dynamic "partition_keys" {
    for_each = each.value.hourly ? ["hour"] : []
    content {
      name = partition_keys.value
      type = "string"
    }
  }

  storage_descriptor {
    location      = "s3://${var.lake_bucket}/${var.lake_prefix}/${each.value.folder}/"
    input_format  = each.value.parquet ? "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat" : "org.apache.hadoop.mapred.TextInputFormat"
    output_format = each.value.parquet ? "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat" : "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"

    ser_de_info {
      serialization_library = each.value.parquet ? "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe" : "org.openx.data.jsonserde.JsonSerDe"
    }

    dynamic "columns" {
      for_each = local.lake_columns[each.key]
      content {
        name = columns.value.name
        type = columns.value.type
      }
    }
  }
}
