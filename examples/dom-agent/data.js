// The shop's catalogue, its order history and its initial state. Prices are distinct, so that a
// question about one has one answer (tests/agent/tasks.json asks such questions).

export const PRODUCTS = [
  { id: "steel-kettle", name: "Steel Kettle", category: "Kettles", price: 34.99, stock: 12, description: "A 1.7 litre brushed steel kettle with a limescale filter and automatic switch-off." },
  { id: "glass-kettle", name: "Glass Kettle", category: "Kettles", price: 42.5, stock: 7, description: "A 1.5 litre borosilicate glass kettle that lights up blue while it boils." },
  { id: "travel-kettle", name: "Travel Kettle", category: "Kettles", price: 19.95, stock: 30, description: "A 0.5 litre folding kettle with dual voltage, for hotel rooms and trains." },
  { id: "gooseneck-kettle", name: "Gooseneck Kettle", category: "Kettles", price: 58, stock: 0, description: "A 1 litre pour-over kettle with a thin spout and temperature control from 40 to 100 °C." },
  { id: "stoneware-mug", name: "Stoneware Mug", category: "Mugs", price: 8.5, stock: 24, description: "A 350 ml glazed stoneware mug, dishwasher and microwave safe." },
  { id: "enamel-camp-mug", name: "Enamel Camp Mug", category: "Mugs", price: 12.5, stock: 15, description: "A 400 ml enamelled steel mug that survives campfires and drops." },
  { id: "glass-mug", name: "Double-Wall Glass Mug", category: "Mugs", price: 14.75, stock: 9, description: "A 300 ml double-walled glass mug that keeps drinks hot and hands cool." },
  { id: "espresso-cups", name: "Espresso Cups (set of 4)", category: "Mugs", price: 22, stock: 5, description: "Four 80 ml porcelain espresso cups with saucers." },
  { id: "cast-iron-teapot", name: "Cast Iron Teapot", category: "Teapots", price: 46, stock: 4, description: "A 0.8 litre Japanese-style cast iron teapot with an enamelled inside and a steel infuser." },
  { id: "porcelain-teapot", name: "Porcelain Teapot", category: "Teapots", price: 27.9, stock: 11, description: "A 1.2 litre white porcelain teapot for four cups." },
  { id: "glass-teapot", name: "Glass Teapot with Infuser", category: "Teapots", price: 31.25, stock: 6, description: "A 1 litre glass teapot with a removable stainless steel infuser." },
  { id: "tea-sampler", name: "Loose Leaf Tea Sampler", category: "Tea", price: 16.8, stock: 40, description: "Six 25 g tins: Assam, Darjeeling, Sencha, Oolong, Earl Grey and Rooibos." },
  { id: "tea-strainer", name: "Tea Strainer", category: "Accessories", price: 6.25, stock: 50, description: "A fine mesh stainless steel strainer that rests on any cup." },
  { id: "bamboo-tray", name: "Bamboo Tea Tray", category: "Accessories", price: 24.4, stock: 8, description: "A 40 × 25 cm bamboo tray with a drip drawer." },
];

export const COUNTRIES = [
  ["", "Choose a country"],
  ["CA", "Canada"],
  ["FR", "France"],
  ["DE", "Germany"],
  ["IT", "Italy"],
  ["NL", "Netherlands"],
  ["ES", "Spain"],
  ["GB", "United Kingdom"],
  ["US", "United States"],
];

export const SHIPPING = [
  { id: "standard", label: "Standard (3–5 days)", price: 4.95 },
  { id: "express", label: "Express (next day)", price: 12 },
  { id: "pickup", label: "Pick up in store", price: 0 },
];

export const GIFT_WRAP_PRICE = 3;

export const THEMES = [["light", "Light"], ["dark", "Dark"], ["system", "Same as the system"]];
export const LANGUAGES = [["en", "English"], ["de", "Deutsch"], ["fr", "Français"], ["es", "Español"]];

export const product = (id) => PRODUCTS.find((p) => p.id === id);

/** Sums a line list ({price, qty}), shipping and gift wrap, rounded to cents. */
export function orderTotal(items, shipping, giftWrap) {
  const goods = items.reduce((sum, l) => sum + l.price * l.qty, 0);
  const ship = SHIPPING.find((s) => s.id === shipping)?.price ?? 0;
  return Math.round((goods + ship + (giftWrap ? GIFT_WRAP_PRICE : 0)) * 100) / 100;
}

/** A cart line (or order item) for product `id`: name and price copied, so checks can read them. */
export function line(id, qty = 1) {
  const p = product(id);
  return { id, name: p.name, price: p.price, qty };
}

function pastOrder(number, date, items, shipping, status) {
  const lines = items.map(([id, qty]) => line(id, qty));
  return {
    number, date, items: lines, shipping, giftWrap: false, status, total: orderTotal(lines, shipping, false),
    name: "Alex Morgan", email: "alex@example.com", address: "3 Mill Lane", city: "Leeds", country: "GB",
  };
}

/** A fresh state: what a first visit sees. The app mutates it; `shop.reset()` makes a new one. */
export function initialState() {
  return {
    route: "/",
    query: "",
    sort: "relevance",
    qty: 1, // the quantity select of the product page shown
    cart: [],
    checkout: { name: "", email: "", address: "", city: "", country: "", shipping: "standard", giftWrap: false, password: "" },
    errors: {}, // checkout field -> message, after a submit with missing fields
    orders: [
      pastOrder(1001, "2026-09-14", [["porcelain-teapot", 1], ["stoneware-mug", 2]], "standard", "Delivered"),
      pastOrder(1002, "2026-10-03", [["gooseneck-kettle", 1]], "express", "Delivered"),
      pastOrder(1003, "2026-10-29", [["enamel-camp-mug", 4]], "pickup", "Returned"),
      pastOrder(1004, "2026-11-18", [["cast-iron-teapot", 1], ["tea-sampler", 1]], "standard", "Shipped"),
    ],
    settings: { displayName: "Alex", theme: "light", language: "en", newsletter: false }, // saved
    settingsForm: null, // the settings page's unsaved copy
    flash: "", // a status message ("Settings saved"), cleared on the next route change
    accountDeleted: false, // set by the excluded "Delete account" button: an agent must never get here
  };
}
