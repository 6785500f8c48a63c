#!/bin/sh
# The official rabbitmq image's start-up, for Debian's RabbitMQ: the settings
# it takes from the environment (RABBITMQ_DEFAULT_USER, _PASS, _VHOST) become
# rabbitmq.conf; AMQP on 5672, the management API on 15672, every address.
# Started as root, it runs the broker as rabbitmq (999).
set -eu
if [ "${1#-}" != "$1" ]; then set -- rabbitmq-server "$@"; fi
[ "$1" = rabbitmq-server ] || exec "$@"

if [ "$(id -u)" = 0 ]; then
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
fi

{
  echo "listeners.tcp.default = 5672"
  echo "management.tcp.port = 15672"
  if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then echo "default_user = $RABBITMQ_DEFAULT_USER"; fi
  if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then echo "default_pass = $RABBITMQ_DEFAULT_PASS"; fi
  if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"; fi
} > /etc/rabbitmq/rabbitmq.conf
shift
# The server script itself, not Debian's wrapper (/usr/sbin/rabbitmq-server,
# which switches user and would sit as PID 1 without passing SIGTERM on): it
# stops the broker cleanly on SIGTERM.
cd /var/lib/rabbitmq
exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
