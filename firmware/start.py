"""Starting the node on a board, once a boot: Wi-Fi joining, the umqtt link with its TLS
context and last will, the node over it (``build``, which ``firmware.node.run`` calls).

Rare, so ``run`` imports it for the start-up and drops it again (``firmware.RARE``).
"""


def build(node_class, cfg, hal, root, ticks_ms, rand4=None):
    """The board's node (a ``firmware.node.Node``, passed in: that module imports this one)
    on its umqtt link, not started yet (``firmware.node.run`` starts it): Wi-Fi is joining,
    the link has its will. ``orrery bench device`` builds it this way too (with its own
    ``rand4``: the WASI runtime has no ``os.urandom``)."""
    import machine

    from firmware.clock import ntp_ms
    from firmware.link import UmqttLink

    _wifi(cfg.get("wifi"))
    b = cfg["broker"]
    link = UmqttLink(
        cfg["device_id"],
        b["host"],
        b["port"],
        cfg.get("username"),
        cfg.get("password"),
        ssl=_ssl_context(b) if b.get("tls") else None,
    )
    node = node_class(
        cfg, hal, root, link, ticks_ms, wall_ms=ntp_ms(cfg), reset=machine.reset, rand4=rand4
    )
    link.will = node.will()
    return node


def _wifi(w):
    """Start joining the configured Wi-Fi without waiting: the link's connects fail (and back
    off) until it is up, and the station keeps reconnecting by itself after a drop."""
    if not w:
        return
    try:
        import network

        sta = network.WLAN(network.STA_IF)
        sta.active(True)
        try:
            sta.config(reconnects=-1)  # ESP32: retry forever after a drop
        except Exception:
            pass
        if not sta.isconnected():
            sta.connect(w["ssid"], w.get("password", ""))
    except Exception as e:  # no radio, bad credentials: the node still runs offline
        print("orrery:", "wifi:", e)


def _ssl_context(broker):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if broker.get("ca"):
        ctx.load_verify_locations(cafile=broker["ca"])
    return ctx
