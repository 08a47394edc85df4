# The two DynamoDB tables classpulse writes, as `classpulse tables create` makes them locally:
# on-demand billing, string keys pk/sk, TTL on `ttl`, no secondary index (README: "DynamoDB
# tables" has the access patterns). Point-in-time recovery and KMS encryption are on. The
# members table (CLASSPULSE_DYNAMODB_MEMBERS_TABLE, pk `member_id`) is the member system's and
# is not made here; the task reads it, and its own `member#` items of the aggregates table,
# with dynamodb:BatchGetItem (deploy/cloudformation/classpulse.yaml, statement MemberProfiles).

variable "events_table" {
  description = "CLASSPULSE_DYNAMODB_EVENTS_TABLE"
  type        = string
  default     = "classpulse-events"
}

variable "aggregates_table" {
  description = "CLASSPULSE_DYNAMODB_AGGREGATES_TABLE"
  type        = string
  default     = "classpulse-aggregates"
}

variable "kms_key_arn" {
  description = "KMS key for server-side encryption (null: the AWS-owned key)"
  type        = string
  default     = null
}

resource "aws_dynamodb_table" "classpulse" {
  for_each     = toset([var.events_table, var.aggregates_table])
  name         = each.value
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }
}

output "table_arns" {
  value = { for name, table in aws_dynamodb_table.classpulse : name => table.arn }
}
