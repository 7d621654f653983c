"""Makes `twistd broker` known to twistd."""

from twisted.application.service import ServiceMaker

broker = ServiceMaker("broker", "broker.app.tap", "A pub/sub message broker.", "broker")
