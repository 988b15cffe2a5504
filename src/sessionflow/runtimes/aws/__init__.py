"""The AWS runtime: Lambda handlers on Kinesis, Firehose to S3, DynamoDB state (``sessionflow[aws]``).

Handlers live in :mod:`sessionflow.runtimes.aws.handlers`; nothing here touches the environment or
imports boto3 at import time.
"""
