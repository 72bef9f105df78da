/**
 * Dead-letter topic names. With a consumer group, `<topic>.<group>.dlq`: a dead letter is then
 * replayed only into the group that failed on it. Without, `<topic>.dlq`: one shared topic, where
 * each dead letter's `dlq_consumer_group` header still tells which group gave up.
 */
export function deadLetterTopic(topic: string, groupId?: string): string {
  return groupId === undefined ? `${topic}.dlq` : `${topic}.${groupId}.dlq`;
}
