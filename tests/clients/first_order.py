"""The README's first order through the Python clients generated from the
order and inventory services' specs (tests/e2e/tests/slow/generated_clients.rs
generates them and runs this).

Usage: first_order.py ORDER_URL INVENTORY_URL CUSTOMER_TOKEN PRODUCT_ID EMAIL

Reads the product, places an order of two as customer c1, reads the order
back until its saga ends, and prints what it read as one JSON line: the
classes the client returned and their fields, so the test sees typed models
rather than raw JSON.
"""

import json
import sys
import time

from inventory_service_client import Client
from inventory_service_client.api.products import get_api_products_product_id
from order_service_client import AuthenticatedClient
from order_service_client.api.orders import get_api_orders_order_id, post_api_orders
from order_service_client.models import CreateOrderRequest, OrderLineRequest, OrderView

order_url, inventory_url, token, product_id, email = sys.argv[1:6]

product = get_api_products_product_id.sync(
    client=Client(base_url=inventory_url), product_id=product_id
)
orders = AuthenticatedClient(base_url=order_url, token=token)
placed = post_api_orders.sync_detailed(
    client=orders,
    body=CreateOrderRequest(
        customer_id="c1",
        customer_email=email,
        items=[OrderLineRequest(product_id=product_id, quantity=2)],
    ),
)
if not isinstance(placed.parsed, OrderView):
    sys.exit(f"POST /api/orders answered {placed.status_code}: {placed.content!r}")

# The saga takes a moment; a deadline, not a fixed wait.
deadline = time.monotonic() + 30
while True:
    order = get_api_orders_order_id.sync(client=orders, order_id=placed.parsed.order_id)
    if not isinstance(order, OrderView):
        sys.exit(f"GET /api/orders/{placed.parsed.order_id} answered {order!r}")
    if order.status.value != "PENDING" or time.monotonic() > deadline:
        break
    time.sleep(0.2)

print(
    json.dumps(
        {
            "productClass": type(product).__name__,
            "productPrice": product.price,
            "placedStatus": placed.status_code.value,
            "placedClass": type(placed.parsed).__name__,
            "orderClass": type(order).__name__,
            "orderId": order.order_id,
            "status": order.status.value,
            "statusClass": type(order.status).__name__,
            "totalAmount": order.total_amount,
            "lines": [
                {"productId": item.product_id, "quantity": item.quantity, "unitPrice": item.unit_price}
                for item in order.items
            ],
        }
    )
)
