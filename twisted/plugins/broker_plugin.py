"""Makes `twistd broker` known to twistd."""

from twisted.application.service import ServiceMaker

broker = ServiceMaker("broker", "broker.tap", "A pub/sub message broker.", "broker")
