// A form whose inputs React controls (bundled by esbuild in agent-dom.test.mjs): React keeps the
// state and drops DOM edits that do not come as its own input events, so only typing the way
// act() does (the native value setter, then `input`) reaches the state shown in #state.
import { useState } from "react";
import { createRoot } from "react-dom/client";

function App() {
  const [name, setName] = useState("");
  const [size, setSize] = useState("M");
  const [news, setNews] = useState(false);
  const [sent, setSent] = useState(0);
  return (
    <form onSubmit={(e) => { e.preventDefault(); setSent((n) => n + 1); }}>
      <label>Name <input value={name} onChange={(e) => setName(e.target.value)} /></label>
      <label>Size <select value={size} onChange={(e) => setSize(e.target.value)}><option value="S">Small</option><option value="M">Medium</option><option value="L">Large</option></select></label>
      <label><input type="checkbox" checked={news} onChange={(e) => setNews(e.target.checked)} /> Newsletter</label>
      <button>Send</button>
      <p id="state">{JSON.stringify({ name, size, news, sent })}</p>
    </form>
  );
}
createRoot(document.getElementById("root")).render(<App />);
