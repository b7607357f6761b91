"""Small inline SVG charts for the HTML report: no scripts, fonts or files from the network."""
from html import escape

FONT = "font-family='system-ui, sans-serif' font-size='12'"


def _svg(width, height, title, body):
    return (f"<svg class='chart' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' width='{width}' "
            f"height='{height}' role='img' aria-label='{escape(title)}'><title>{escape(title)}</title>{body}</svg>")


def horizontal_bars(rows, title, width=640, value_format="{:.1%}", maximum=None):
    """One bar per (name, value, colour); values from 0 to `maximum` (default: the largest value)."""
    label_width, bar_height, gap = 230, 22, 10
    top = max([value for _, value, _ in rows] + [maximum or 0]) or 1
    room = width - label_width - 70
    parts = []
    for index, (name, value, colour) in enumerate(rows):
        y = index * (bar_height + gap)
        length = room * value / top
        parts.append(f"<text x='{label_width - 8}' y='{y + 15}' text-anchor='end' {FONT}>{escape(name)}</text>"
                     f"<rect x='{label_width}' y='{y}' width='{length:.1f}' height='{bar_height}' fill='{colour}'>"
                     f"<title>{escape(name)}: {value_format.format(value)}</title></rect>"
                     f"<text x='{label_width + length + 6:.1f}' y='{y + 15}' {FONT}>"
                     f"{value_format.format(value)}</text>")
    return _svg(width, max(1, len(rows)) * (bar_height + gap), title, "".join(parts))


def line_chart(dates, series, title, width=720, height=280):
    """Lines of rates (0-1) over dates: series is [(name, colour, [value or None per date])]."""
    left, right, top, bottom = 64, 16, 16, 64
    plot_width, plot_height = width - left - right, height - top - bottom
    highest = max([v for _, _, values in series for v in values if v is not None] + [0.01])
    step = plot_width / max(1, len(dates) - 1)

    def point(index, value):
        return left + (index * step if len(dates) > 1 else plot_width / 2), top + plot_height * (1 - value / highest)

    parts = []
    for tick in range(5):
        value = highest * tick / 4
        y = top + plot_height * (1 - tick / 4)
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#ddd'/>"
                     f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' {FONT}>{value:.0%}</text>")
    every = max(1, len(dates) // 12)
    for index, day in enumerate(dates):
        if index % every == 0 or index == len(dates) - 1:
            x, _ = point(index, 0)
            parts.append(f"<text x='{x:.1f}' y='{height - bottom + 16}' text-anchor='end' {FONT} "
                         f"transform='rotate(-40 {x:.1f} {height - bottom + 16})'>{escape(day)}</text>")
    for name, colour, values in series:
        points = [(index, value) for index, value in enumerate(values) if value is not None]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, v) for i, v in points))
        parts.append(f"<polyline class='series' points='{path}' fill='none' stroke='{colour}' stroke-width='2'/>")
        for index, value in points:
            x, y = point(index, value)
            parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colour}'>"
                         f"<title>{escape(name)} {escape(dates[index])}: {value:.1%}</title></circle>")
    return _svg(width, height, title, "".join(parts))


def histogram(bins, title, width=640, height=240, colours=None):
    """Vertical bars of counts: bins is [(bin name, count)]; colours optionally one per bin."""
    left, bottom, top = 40, 36, 16
    plot_height = height - top - bottom
    highest = max([count for _, count in bins] + [1])
    slot = (width - left) / max(1, len(bins))
    parts = [f"<line x1='{left}' x2='{width}' y1='{top + plot_height}' y2='{top + plot_height}' stroke='#999'/>"]
    for index, (name, count) in enumerate(bins):
        bar = plot_height * count / highest
        x = left + index * slot + 3
        colour = colours[index] if colours else "#4c78a8"
        parts.append(f"<rect x='{x:.1f}' y='{top + plot_height - bar:.1f}' width='{slot - 6:.1f}' height='{bar:.1f}' "
                     f"fill='{colour}'><title>{escape(name)}: {count}</title></rect>"
                     f"<text x='{x + (slot - 6) / 2:.1f}' y='{top + plot_height - bar - 4:.1f}' text-anchor='middle' "
                     f"{FONT}>{count}</text>"
                     f"<text x='{x + (slot - 6) / 2:.1f}' y='{height - 14}' text-anchor='middle' {FONT}>"
                     f"{escape(name)}</text>")
    return _svg(width, height, title, "".join(parts))
