"""Native tasks. Each module defines one `Task` subclass and registers it with `@register_task`."""
